"""One distance at a time, written out: the reference the vectorised losses are tested against."""


def distance(x, i, j, kind):
    diff = x[i] - x[j]
    if kind == "sqeuclidean":
        return (diff * diff).sum()
    if kind == "euclidean":
        return (diff * diff).sum().sqrt()
    return 1 - (x[i] @ x[j]) / (x[i].norm() * x[j].norm())
