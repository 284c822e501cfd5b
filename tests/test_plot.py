"""The figures render to real image files of the expected size, with titles and legends."""

import struct

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from gdjax import functions, plot  # noqa: E402


def png_size(path):
    """Width and height from a PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def sweep_like(n=24):
    lrs = np.geomspace(1e-4, 1.0, n)
    steps = np.arange(0, 101, 10)
    losses = np.exp(-np.outer(lrs * 10, steps)) + 1e-6
    status = np.where(lrs > 0.3, "diverged", np.where(lrs > 0.05, "converged", "max_steps"))
    return lrs, steps, losses, status


def test_trajectories_png(tmp_path):
    f = functions.rosenbrock
    paths = {
        "straight": np.linspace(f.start, f.minimizers[0], 20),
        "detour": np.array([f.start, [-1.0, -1.0], [0.5, -0.5], [1.0, 1.0]]),
    }
    out = tmp_path / "race.png"
    fig = plot.trajectories(f, paths, path=out, dpi=50)
    assert png_size(out) == (350, 280)  # figsize (7, 5.6) at dpi 50
    ax = fig.axes[0]
    assert ax.get_title() == "rosenbrock"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["straight", "detour", "start", "known minimiser"]
    # Rosenbrock's walls rise far above its valley: the contour levels are log-spaced.
    assert "log" in fig.axes[1].get_ylabel()


def test_trajectories_with_the_loss_panel(tmp_path):
    f = functions.rosenbrock
    paths = {"a": np.linspace(f.start, f.minimizers[0], 11), "b": np.linspace(f.start, 0, 11)}
    out = tmp_path / "race.png"
    fig = plot.trajectories(f, paths, steps=np.arange(0, 101, 10), path=out, dpi=50)
    assert png_size(out) == (600, 260)  # figsize (12, 5.2) at dpi 50
    contour, by_step, _ = fig.axes
    assert [t.get_text() for t in by_step.get_legend().get_texts()] == ["a", "b"]
    assert by_step.get_yscale() == "log" and by_step.get_xlabel() == "step"
    along_a = by_step.get_lines()[0].get_ydata()
    assert along_a[0] == pytest.approx(24.2)  # f at the start
    assert 0 < along_a[-1] <= along_a.min()  # f = 0 at the minimiser, floored for the log axis
    with pytest.raises(ValueError, match="steps has 3 entries"):
        plot.trajectories(f, paths, steps=[0, 1, 2])


def test_trajectories_svg_and_linear_levels(tmp_path):
    out = tmp_path / "sphere.svg"
    fig = plot.trajectories(functions.sphere, {"p": [[-3.0, 4.0], [0.0, 0.0]]}, path=out,
                            title="bowl")
    assert out.read_text().lstrip().startswith("<?xml")
    assert fig.axes[0].get_title() == "bowl"
    assert "log" not in fig.axes[1].get_ylabel()


def test_trajectories_without_metadata_fits_the_paths():
    fig = plot.trajectories(lambda x: x[0] ** 2 + x[1] ** 2, {"p": [[10.0, 10.0], [12.0, 9.0]]})
    lo, hi = fig.axes[0].get_xlim()
    assert lo < 10.0 and hi > 12.0


def test_loss_curves_png(tmp_path):
    lrs, steps, losses, status = sweep_like()
    out = tmp_path / "curves.png"
    fig = plot.loss_curves(steps, losses, lrs, status=status, path=out, dpi=60)
    assert png_size(out) == (420, 276)
    ax, cbar = fig.axes
    assert ax.get_yscale() == "log" and cbar.get_ylabel() == "learning rate"
    assert len(ax.get_lines()) == len(lrs) + np.sum(status == "diverged") + 1  # + legend proxy


def test_loss_vs_learning_rate_png(tmp_path):
    lrs, _, losses, status = sweep_like()
    out = tmp_path / "lr.png"
    fig = plot.loss_vs_learning_rate(lrs, losses[:, -1], status, boundary=0.3, path=out, dpi=60)
    assert png_size(out) == (420, 276)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"diverged ({np.sum(status == 'diverged')})" in labels
    assert "2/L = 0.3" in labels


def test_basin_map_png(tmp_path):
    f = functions.himmelblau
    g = np.linspace(-5, 5, 21)
    gx, gy = np.meshgrid(g, g)
    starts = np.stack([gx.ravel(), gy.ravel()], axis=1)
    nearest = np.argmin(np.linalg.norm(starts[:, None] - f.minimizers[None], axis=-1), axis=1)
    final = f.minimizers[nearest]
    status = np.where(np.abs(starts[:, 0]) > 4.6, "diverged", "converged")
    out = tmp_path / "basin.png"
    fig = plot.basin_map(starts, final, status, f.minimizers, f=f, path=out, dpi=50)
    assert png_size(out) == (320, 280)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(labels) == 5 and labels[-1].startswith("diverged")


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="must be a \\(T, 2\\) array"):
        plot.trajectories(functions.sphere, {"p": np.zeros(3)})
    with pytest.raises(ValueError, match="same length"):
        plot.loss_vs_learning_rate([0.1, 0.2], [1.0])
    with pytest.raises(ValueError, match="radius must be positive"):
        plot.basin_map(np.zeros((2, 2)), np.zeros((2, 2)), None, np.zeros((1, 2)), radius=0)
