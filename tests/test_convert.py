import subprocess

import pytest
import soundfile as sf

from speakertrip.cli import main
from speakertrip.corpora.convert import convert_tree, find_ffmpeg
from speakertrip.errors import SpeakertripError
from speakertrip.testing import speech_like


@pytest.fixture(scope="module")
def m4a_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("vox2") / "dev" / "aac"
    ffmpeg = find_ffmpeg()
    for speaker, video in (("id00012", "21Uxsk56VDQ"), ("id00015", "0fijmz4vTVU")):
        folder = root / speaker / video
        folder.mkdir(parents=True)
        wav = folder / "source.wav"
        sf.write(wav, speech_like(int(speaker[-2:]), 0.5, 16000), 16000, subtype="PCM_16")
        subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(wav), "-c:a", "aac",
                        str(folder / "00001.m4a")], check=True)
        wav.unlink()
    return root


def test_converts_in_place_then_resumes(m4a_tree, tmp_path, capsys):
    out = tmp_path / "wav"
    assert main(["convert", str(m4a_tree), "--out", str(out), "--workers", "2"]) == 0
    converted = sorted(out.rglob("*.wav"))
    assert [p.relative_to(out).as_posix() for p in converted] == ["id00012/21Uxsk56VDQ/00001.wav",
                                                                    "id00015/0fijmz4vTVU/00001.wav"]
    for path in converted:
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.duration == pytest.approx(0.5, abs=0.05)
    assert "converted" in capsys.readouterr().out
    converted[0].unlink()
    report = convert_tree(m4a_tree, out, progress=False)
    assert report["converted"] == [converted[0]] and report["skipped"] == [converted[1]]
    assert not list(out.rglob("*.partial"))


def test_failures_are_reported_by_name_without_leftovers(m4a_tree, tmp_path, capsys):
    source = tmp_path / "src"
    (source / "id1").mkdir(parents=True)
    (source / "id1" / "broken.m4a").write_bytes(b"not an m4a file at all")
    assert main(["convert", str(source)]) == 1
    assert "failed: " + str(source / "id1" / "broken.m4a") in capsys.readouterr().out
    assert [p.name for p in (source / "id1").iterdir()] == ["broken.m4a"]
    with pytest.raises(SpeakertripError, match="no \\*.ogg files to convert"):
        convert_tree(tmp_path / "src" / "id1", tmp_path, extension="ogg", progress=False)
