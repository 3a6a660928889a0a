"""Figures: latent rewards R_t and dense rewards ΔR_t per trajectory, ψ(t) calibration history, reward curves.

Every function renders off-screen with matplotlib's Agg canvas on a standalone `Figure` (no pyplot, no global
backend switch, safe in a background thread of a host such as ComfyUI) and returns the saved path when
`out_path` is given, else a PIL image (RGB) that a ComfyUI node can turn into an IMAGE tensor.

Notation map (code → paper), as in schedule.py:
    R[:, k]    R_t with t = T - k: column 0 = R_T (ODE from the initial noise), column T = R_0 (the sample)
    dR[:, k]   ΔR_t = R_{t-1} - R_t, the dense reward of the step t = T - k (docs/method.md §5)
    psi[k]     ψ(t) for the step t = T - k
matplotlib and PIL are imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import io
import os
from typing import Any, Mapping, Sequence

import numpy as np

DPI = 110


def _new_figure(width: float, height: float, **subplots):
    """A standalone Agg figure and its axes (`subplots` as for Figure.subplots)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(**subplots)


def figure_to_image(fig):
    """Render a matplotlib figure to a PIL RGB image."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    buf.seek(0)
    with Image.open(buf) as image:
        return image.convert("RGB")


def _plain(text) -> str:
    """User text (titles, method names) shown literally: a `$` must not start matplotlib mathtext."""
    return str(text).replace("$", r"\$")


def _finish(fig, out_path):
    """Save to out_path and return it, or return the figure as a PIL image."""
    if out_path is None:
        return figure_to_image(fig)
    out_path = os.fspath(out_path)
    fig.savefig(out_path, dpi=DPI)
    return out_path


def _as_array(values, name: str, ndim: int | tuple[int, ...]) -> np.ndarray:
    """Tensor / array / nested list → finite float64 numpy array of `ndim` dims; ValueError naming `name`."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a rectangular numeric array: {e}") from None
    if arr.ndim not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def _step_ticks(ax, T: int, tau: Sequence[float] | None) -> None:
    """Grid positions k = 0 … T labelled by the paper timestep t = T - k (and τ(t) when given)."""
    ax.set_xticks(range(T + 1))
    if tau is None:
        ax.set_xticklabels([str(T - k) for k in range(T + 1)])
        ax.set_xlabel("timestep t  (noise → clean)")
    else:
        ax.set_xticklabels([f"{T - k}\n{tau[k]:.2f}" for k in range(T + 1)])
        ax.set_xlabel("timestep t / flow time τ  (noise → clean)")


def plot_dense_rewards(
    R,
    out_path: str | os.PathLike | None = None,
    title: str = "Latent rewards R_t and dense rewards ΔR_t",
    tau: Sequence[float] | None = None,
    max_trajectories: int = 8,
):
    """DenseGRPO Fig. 3: R_t per trajectory (top), ΔR_t per step (middle), #ΔR_t > 0 / < 0 per step (bottom).

    R: (B, T+1) latent rewards in grid order (column 0 = R_T, column T = R_0). The first `max_trajectories`
    trajectories are drawn; the group mean and the sign counts use all B. tau: optional T+1 flow times for the
    axis labels. Returns out_path if given, else a PIL image.
    """
    R = _as_array(R, "R (latent rewards, (B, T+1))", 2)
    B, K = R.shape
    if K < 2 or B < 1:
        raise ValueError(f"R must be (B, T+1) with B >= 1 and T >= 1, got shape {R.shape}")
    T = K - 1
    if tau is not None:
        tau = [float(v) for v in tau]
        if len(tau) != K:
            raise ValueError(f"tau must hold T+1 = {K} flow times to match R, got {len(tau)}")
    if max_trajectories < 1:
        raise ValueError(f"max_trajectories must be >= 1, got {max_trajectories}")
    dR = R[:, 1:] - R[:, :-1]  # (B, T): ΔR of the step t = T - k
    pos, neg = (dR > 0).sum(axis=0), (dR < 0).sum(axis=0)  # (T,) each
    n = min(B, max_trajectories)
    steps = np.arange(T)
    mids = steps + 0.5  # a step sits between its two grid points

    from matplotlib import colormaps

    colors = colormaps["tab10"].colors
    fig, (ax_r, ax_d, ax_s) = _new_figure(10, 9, nrows=3, sharex=True, gridspec_kw={"height_ratios": [3, 2.2, 1.4]})
    fig.suptitle(_plain(title))

    for i in range(n):
        ax_r.plot(range(K), R[i], marker="o", ms=3.5, lw=1.3, color=colors[i % 10], label=f"trajectory {i}")
    ax_r.plot(range(K), R.mean(axis=0), color="black", lw=2.2, ls="--", label=f"mean of {B}")
    ax_r.set_ylabel(r"$R_t$ = reward of ODE$_t(x_t)$")
    ax_r.set_title(f"Latent rewards: $R_{{{T}}}$ from the initial noise … $R_0$ of the final sample")
    ax_r.legend(fontsize=7, ncol=2 if n > 4 else 1, loc="best")

    width = 0.8 / n
    for i in range(n):
        ax_d.bar(mids - 0.4 + (i + 0.5) * width, dR[i], width=width, color=colors[i % 10], label=f"trajectory {i}")
    ax_d.axhline(0.0, color="black", lw=0.8)
    ax_d.set_ylabel(r"$\Delta R_t = R_{t-1} - R_t$")
    ax_d.set_title(r"Dense reward $\Delta R_t$ of each denoising step $t \rightarrow t-1$")

    ax_s.bar(mids, pos, width=0.6, color="tab:green")
    ax_s.bar(mids, -neg, width=0.6, color="tab:red")
    for k in steps:
        ax_s.annotate(f"+{pos[k]}", (mids[k], pos[k]), ha="center", va="bottom", fontsize=7)
        ax_s.annotate(f"−{neg[k]}", (mids[k], -neg[k]), ha="center", va="top", fontsize=7)
    ax_s.axhline(0.0, color="black", lw=0.8)
    ax_s.set_ylim(-1.35 * max(B, 1), 1.35 * max(B, 1))
    ax_s.set_ylabel("# trajectories")
    ax_s.set_title(f"Sign of $\\Delta R_t$ over all {B} trajectories: green $> 0$ (up), red $< 0$ (down)")
    _step_ticks(ax_s, T, tau)
    for ax in (ax_r, ax_d, ax_s):
        ax.grid(alpha=0.3)
        ax.set_xlim(-0.3, T + 0.3)
    return _finish(fig, out_path)


def plot_psi_history(
    history: Sequence[Mapping[str, Any]],
    out_path: str | os.PathLike | None = None,
    title: str = "Calibration of the per-step noise level ψ(t)",
):
    """ψ(t) across calibration iterations (left, a line per step) and the final vs initial ψ (right).

    history: one dict per iteration with `iteration`, `psi` (T floats, grid order), `pos`, `neg` (T ints:
    #ΔR_t > 0 / < 0) and `n` (trajectories), as calibrate.calibrate records. Returns out_path or a PIL image.
    """
    if not history:
        raise ValueError("history must hold at least one calibration iteration, got none")
    for i, record in enumerate(history):
        missing = {"iteration", "psi", "pos", "neg", "n"} - set(record)
        if missing:
            raise ValueError(f"history[{i}] lacks the key(s) {sorted(missing)}")
    psi = _as_array([h["psi"] for h in history], "history psi (iterations, T)", 2)  # (I, T)
    pos = _as_array([h["pos"] for h in history], "history pos (iterations, T)", 2)  # (I, T)
    neg = _as_array([h["neg"] for h in history], "history neg (iterations, T)", 2)  # (I, T)
    if not psi.shape == pos.shape == neg.shape:
        raise ValueError(
            f"history psi, pos and neg must have one entry per step each, got shapes "
            f"{psi.shape}, {pos.shape}, {neg.shape}"
        )
    iterations = [h["iteration"] for h in history]
    T = psi.shape[1]

    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    cmap = colormaps["viridis"]
    fig, (ax_h, ax_f) = _new_figure(12, 4.8, ncols=2)
    fig.suptitle(_plain(title))
    for k in range(T):
        ax_h.plot(
            iterations,
            psi[:, k],
            marker="o" if len(iterations) < 30 else None,
            ms=3,
            color=cmap(k / max(T - 1, 1)),
            label=f"t = {T - k}",
        )
    ax_h.set_xlabel("calibration iteration")
    ax_h.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_h.set_ylabel("ψ(t)")
    ax_h.set_title("ψ(t) per step across iterations")
    ax_h.legend(fontsize=7, ncol=2, title="step", title_fontsize=7)

    steps = np.arange(T)
    ax_f.plot(steps, psi[0], ls="--", marker="s", ms=4, color="gray", label=f"initial (iteration {iterations[0]})")
    ax_f.plot(steps, psi[-1], marker="o", ms=5, color="tab:blue", label=f"final (iteration {iterations[-1]})")
    for k in steps:
        ax_f.annotate(
            f"+{int(pos[-1, k])}/−{int(neg[-1, k])}",
            (k, psi[-1, k]),
            textcoords="offset points",
            xytext=(0, 7),
            ha="center",
            fontsize=7,
        )
    ax_f.margins(y=0.12)
    ax_f.set_xticks(steps)
    ax_f.set_xticklabels([str(T - k) for k in steps])
    ax_f.set_xlabel("timestep t  (noise → clean)")
    ax_f.set_ylabel("ψ(t)")
    ax_f.set_title(f"Final vs initial ψ(t); labels: #ΔR>0 / #ΔR<0, last iteration, N = {history[-1]['n']}", fontsize=10)
    ax_f.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    for ax in (ax_h, ax_f):
        ax.grid(alpha=0.3)
    return _finish(fig, out_path)


def _seed_matrix(method: str, curve: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A method's curve → iterations (I,) and rewards (seeds, I); a flat reward list is one seed."""
    for key in ("iterations", "reward_mean"):
        if key not in curve:
            raise ValueError(f"reward curve {method!r} lacks the key {key!r}")
    iterations = _as_array(curve["iterations"], f"{method!r} iterations", 1)  # (I,)
    values = _as_array(curve["reward_mean"], f"{method!r} reward_mean (seeds, iterations)", (1, 2))
    if values.ndim == 1:  # a single seed
        values = values[None]  # (1, I)
    if values.shape[1] != len(iterations) or values.shape[0] < 1:
        raise ValueError(
            f"reward curve {method!r}: every seed needs one reward per iteration "
            f"({len(iterations)}), got shape {values.shape}"
        )
    return iterations, values


def plot_reward_curves(
    curves: Mapping[str, Mapping[str, Any]],
    out_path: str | os.PathLike | None = None,
    title: str = "Reward during training",
    reference: Mapping[str, float] | None = None,
):
    """Mean reward across seeds per method with a min–max band over seeds, plus optional reference lines.

    curves: {method: {"iterations": [...], "reward_mean": [[seed 0 ...], [seed 1 ...]] or a flat list}}.
    reference: {label: reward} drawn as dashed horizontal lines (e.g. {"pretrained": 0.55}).
    Returns out_path or a PIL image.
    """
    if not curves:
        raise ValueError("curves must hold at least one method, got none")
    from matplotlib import colormaps

    colors = colormaps["tab10"].colors
    fig, ax = _new_figure(8, 5)
    for i, (method, curve) in enumerate(curves.items()):
        iterations, values = _seed_matrix(method, curve)
        color = colors[i % 10]
        seeds = values.shape[0]
        ax.plot(
            iterations,
            values.mean(axis=0),
            marker="o" if len(iterations) < 40 else None,
            ms=3.5,
            lw=1.8,
            color=color,
            label=f"{_plain(method)} (mean of {seeds} seed{'s' * (seeds > 1)})",
        )
        if seeds > 1:
            ax.fill_between(
                iterations,
                values.min(axis=0),
                values.max(axis=0),
                color=color,
                alpha=0.2,
                lw=0,
                label=f"{_plain(method)} min–max over seeds",
            )
    greys = ("0.35", "0.55", "0.15", "0.7")
    for j, (label, value) in enumerate((reference or {}).items()):
        ax.axhline(
            float(value), ls="--", lw=1.2, color=greys[j % len(greys)], label=f"{_plain(label)} ({float(value):.3f})"
        )
    ax.set_title(_plain(title))
    ax.set_xlabel("training iteration")
    ax.set_ylabel("reward (mean over prompts)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _finish(fig, out_path)


def image_grid(images, pad: int = 2):
    """Tile images (R, C, H, W, 3) in [0, 1] into one (R·(H+pad)-pad, C·(W+pad)-pad, 3) tensor, row-major
    (e.g. rows = trajectories, columns = the ODE-completed image of every step). Padding is white."""
    import torch

    images = torch.as_tensor(images)
    if images.ndim != 5 or images.shape[-1] != 3:
        raise ValueError(f"images must be (rows, columns, H, W, 3), got shape {tuple(images.shape)}")
    R, C, H, W, _ = images.shape
    out = images.new_ones((R * (H + pad) - pad, C * (W + pad) - pad, 3))
    for r in range(R):
        for c in range(C):
            out[r * (H + pad) : r * (H + pad) + H, c * (W + pad) : c * (W + pad) + W] = images[r, c]
    return out


def save_image_grid(images, path: str | os.PathLike, ncol: int) -> str:
    """Save images (N, H, W, 3) in [0, 1] as one PNG, `ncol` per row (N a multiple of ncol), atomically."""
    from PIL import Image

    from .atomic import atomic_write

    images = images.float().clamp(0, 1)
    grid = image_grid(images.reshape(-1, ncol, *images.shape[1:]))
    im = Image.fromarray((grid.cpu().numpy() * 255).round().astype("uint8"))
    atomic_write(os.fspath(path), lambda tmp: im.save(tmp, format="PNG"))
    return os.fspath(path)


def pil_to_tensor(image):
    """A PIL RGB image → (H, W, 3) float32 tensor in [0, 1]."""
    import torch

    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)


def plot_time_to_reward(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    out_path: str | os.PathLike | None = None,
    reference: Mapping[str, float] | None = None,
):
    """Held-out reward against training wall-clock seconds (left) and against rollout NFE (right), one line per
    method. curves: {method: {"seconds": [...], "nfe": [...], "reward": [...]}} (means over seeds);
    reference: {label: reward} as dashed horizontal lines. Returns out_path or a PIL image."""
    if not curves:
        raise ValueError("curves must hold at least one method, got none")
    from matplotlib import colormaps

    colors = colormaps["tab10"].colors
    fig, axes = _new_figure(12, 4.8, ncols=2, sharey=True)
    for ax, key, label in ((axes[0], "seconds", "training wall-clock seconds"), (axes[1], "nfe", "rollout NFE")):
        for i, (method, c) in enumerate(curves.items()):
            ax.plot(c[key], c["reward"], marker="o", ms=3, lw=1.6, color=colors[i % 10], label=_plain(method))
        for j, (name, value) in enumerate((reference or {}).items()):
            ax.axhline(
                float(value), ls="--", lw=1.0, color=("0.35", "0.6")[j % 2], label=f"{_plain(name)} ({value:.3f})"
            )
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out ODE reward")
    axes[0].set_title("reward vs wall-clock time")
    axes[1].set_title("reward vs network evaluations")
    axes[1].legend(fontsize=8, loc="best")
    return _finish(fig, out_path)
