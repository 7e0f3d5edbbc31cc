"""A picture of the first layer's filters: the baseline's, the flattened layer's rank-1
ones, and the whole flattened layer composed."""

from __future__ import annotations

from pathlib import Path

from .networks import ConvNet, composed_first_layer


def save_filters(baseline: ConvNet, flattened: ConvNet, path, max_filters: int = 32) -> Path:
    """A PNG with three rows of first-layer filters: the baseline's dense k x k filters;
    the rank-1 k x k filters of the flattened layer's first stage
    (FlatParams.dense_weight: lateral x vertical x horizontal); and the whole flattened
    first layer (both stages composed, biases dropped, (2k-1) x (2k-1), not rank-1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("baseline conv1 (dense k x k)", baseline.convs[0].weight.detach().cpu()),
        ("flattened conv1, stage 1: rank-1 L x V x H", flattened.convs[0][0].params().detach().to("cpu").dense_weight()),
        ("flattened conv1, both stages composed (2k-1)", composed_first_layer(flattened)),
    ]
    n = min(max_filters, panels[0][1].shape[0])
    fig, axes = plt.subplots(len(panels), n, figsize=(n * 0.42, len(panels) * 0.62 + 0.2), squeeze=False)
    for row, (title, w) in enumerate(panels):
        for j in range(n):
            ax = axes[row][j]
            f = w[j]
            f = (f - f.min()) / (f.max() - f.min() + 1e-12)  # each filter scaled to [0, 1] alone
            if f.shape[0] == 3:
                ax.imshow(f.permute(1, 2, 0).numpy(), interpolation="nearest")
            else:
                ax.imshow(f.mean(0).numpy(), cmap="gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_title(title, fontsize=7, loc="left", pad=2)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.01, wspace=0.08, hspace=0.45)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


