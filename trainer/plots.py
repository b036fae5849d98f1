"""The one way the trainer draws a figure: matplotlib without a display (Agg), written as a
PNG atomically (sweeps, reproductions, reliability diagrams, layer weights)."""

from __future__ import annotations

from pathlib import Path

from .files import atomic_path

__all__ = ["new_figure", "save_figure", "save_plot"]


def new_figure(*, nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6, 4)):
    """(figure, axes) on matplotlib's Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=size, squeeze=True)


def save_figure(fig, path: Path) -> None:
    """Lay out and write ``fig`` as a PNG (atomically), and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def save_plot(fig, ax, path: Path, xlabel: str, ylabel: str) -> None:
    """Label, grid and legend a one-panel figure, and write it (:func:`save_figure`)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)
