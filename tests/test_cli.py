import subprocess
import sys

import pytest

from speakertrip.cli import main
from speakertrip.errors import ConfigError
from speakertrip.registry import Registry


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "prepare" in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_python_dash_m_runs():
    done = subprocess.run([sys.executable, "-m", "speakertrip", "--version"], capture_output=True, text=True)
    assert done.returncode == 0
    assert done.stdout.startswith("speakertrip ")


def test_registry_unknown_name_lists_valid_ones():
    registry = Registry("widget")
    registry.register("b")(1)
    registry.register("a")(2)
    with pytest.raises(ConfigError, match="unknown widget 'c'; valid names: a, b"):
        registry.get("c")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a")(3)
