"""`python -m densegrpo_core <command>`: demo, sample, calibrate, visualize, train, bench.

Exit codes (docs/robustness.md): 0 success, 2 bad arguments or inputs (one-line reason on stderr), 1 failure
during work, 3 `train` stopped by a signal after saving (resumable), 130 aborted by a second signal.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_STOPPED, EXIT_ABORTED = 0, 1, 2, 3, 130
REPEAT_WINDOW_S = 2.0  # a signal this soon after the first is the same request (torchrun or a scheduler
# forwarding the terminal's Ctrl-C to a worker that already got it), not a second one


class InputError(Exception):
    """Bad arguments or input files: exit code 2."""


def _psi_arg(text: str | None, tau):
    """ψ from a number (uniform, Flow-GRPO's form), a comma-separated list, or a psi.json path, checked
    against the grid `tau` (T+1,) it is used on."""
    from ..method.schedule import FLOW_GRPO_NOISE_LEVEL, Psi, as_psi

    steps = len(tau) - 1
    if text is None:
        return Psi.uniform(FLOW_GRPO_NOISE_LEVEL, steps)
    if os.path.exists(text) or text.endswith(".json"):
        return as_psi(Psi.load(text), steps).check_grid(tau.tolist(), "the sampling grid (--grid, --steps, --shift)")
    psi = Psi.parse(text)
    return as_psi(psi.values[0] if psi.steps == 1 else psi, steps)


def _reward(spec, path=None, device: str | None = None, checked: str | None = None):
    """The reward named by --reward / TrainConfig.reward with its model files (--reward-path / reward_path);
    with `checked` (what the command does) every call is checked and a failure names the reward and the call
    (the trainer checks its own calls)."""
    from ..rewards import CheckedReward, get_reward, parse_reward_paths

    reward = get_reward(spec, parse_reward_paths(path) if isinstance(path, str) else path, device=device)
    return CheckedReward(reward, checked) if checked else reward


def _reward_path_arg(text: str):
    """--reward-path: one file/folder, or name=PATH,name=PATH for the terms of a weighted reward."""
    from ..rewards import parse_reward_paths

    return parse_reward_paths(text)


def _save_images(images, path: str, scale: int = 8, ncol: int | None = None) -> None:
    """Save (N, H, W, 3) images in [0, 1] as one PNG grid, upscaled for viewing."""
    import numpy as np
    from PIL import Image

    n, h, w, _ = images.shape
    ncol = ncol or min(n, 8)
    nrow = (n + ncol - 1) // ncol
    grid = np.ones((nrow * (h + 1) - 1, ncol * (w + 1) - 1, 3), dtype=np.float32)
    for i, img in enumerate(images.cpu().float().numpy()):
        r, c = divmod(i, ncol)
        grid[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = img
    im = Image.fromarray((grid * 255).round().astype("uint8"))
    im.resize((im.width * scale, im.height * scale), Image.NEAREST).save(path)


def _stop_flag() -> threading.Event:
    """SIGINT/SIGTERM ask the trainer to finish its iteration, save and exit (EXIT_STOPPED); a signal within
    REPEAT_WINDOW_S of the first counts as the same request, a later one aborts (KeyboardInterrupt)."""
    flag = threading.Event()
    first = []
    rank0 = os.environ.get("RANK", "0") == "0"

    def handler(signum, frame):
        now = time.monotonic()
        if flag.is_set():
            if now - first[0] < REPEAT_WINDOW_S:
                return
            raise KeyboardInterrupt
        first.append(now)
        flag.set()
        if rank0:
            print(
                f"\n[densegrpo] {signal.Signals(signum).name}: finishing this iteration, then saving "
                f"(signal again after {REPEAT_WINDOW_S:g} s to abort without saving)",
                file=sys.stderr,
                flush=True,
            )

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return flag


def _model_and_grid(args, prompts=None):
    """The pipeline named by --model, its training prompts, the grid (--grid, --steps, --shift), the CFG scale.

    A diffusers folder encodes `prompts` (sample's --prompt) or the --prompts file once at load time."""
    from ..method.schedule import flow_grid
    from ..models.spec import ModelSpec, check_model_path

    check_model_path(args.model)
    given = prompts or getattr(args, "prompts_file", None)
    if args.model == "toy":
        spec = ModelSpec(train_prompts=given)
    else:
        spec = ModelSpec(
            model=args.model, train_prompts=given, resolution=args.resolution, transformer_file=args.transformer_file
        )
    pipe, train_prompts, _ = spec.load(args.device, args.dtype or _default_dtype(args.model, args.device))
    tau = flow_grid(args.steps, pipe.default_shift if args.shift is None else args.shift, args.grid)
    return pipe, train_prompts, tau, pipe.default_cfg if args.cfg is None else args.cfg


# ----------------------------------------------------------------------------- commands
def cmd_sample(args) -> int:
    import torch

    from ..method.rollout import fused_rollout, ode_sample
    from ..method.schedule import sde_noise_scales
    from ..models.pipeline import score_latents

    reward = _reward(args.reward, args.reward_path, args.device, "sample")  # its errors before any work
    pipe, _, tau, cfg_scale = _model_and_grid(args, prompts=args.prompt)
    if args.lora:
        from ..models.lora import inject_lora, load_lora, read_lora_metadata

        meta = read_lora_metadata(args.lora)
        net = pipe.lora_module or pipe.model
        inject_lora(net, meta.get("base_arch", pipe.arch), rank=int(meta["rank"]), alpha=float(meta["alpha"]))
        load_lora(args.lora, net, prefix=pipe.lora_prefix)
    prompts = [p for p in args.prompt for _ in range(args.num)]
    gen = torch.Generator().manual_seed(args.seed)
    x_T = torch.randn((len(prompts), *pipe.latent_shape), generator=gen).to(args.device)
    guide = pipe.guide(prompts, cfg_scale, device=args.device)
    if args.psi is None:
        x0 = ode_sample(guide, x_T, tau)
    else:
        x0 = fused_rollout(
            guide, x_T, tau, sde_noise_scales(_psi_arg(args.psi, tau).tensor(), tau), generator=gen
        ).latents[:, -1]
    images = pipe.decode(x0)
    _save_images(images, args.out, ncol=args.num)
    scores = score_latents(x0, prompts, pipe.decode, reward)
    for p in args.prompt:
        s = scores[[i for i, q in enumerate(prompts) if q == p]]
        print(f"{p!r}: reward {s.mean():.3f} ± {s.std(unbiased=False):.3f} over {len(s)} samples")
    print(f"wrote {args.out}")
    return 0


def cmd_calibrate(args) -> int:
    from ..method.calibrate import CalibrationConfig, calibrate
    from ..models.pipeline import dense_reward_sampler, fused_rollout_rewards
    from ..util.plots import plot_psi_history

    reward = _reward(args.reward, args.reward_path, args.device, "calibration")  # its errors before any work
    os.makedirs(args.out, exist_ok=True)
    pipe, train_prompts, tau, cfg_scale = _model_and_grid(args)
    psi0 = _psi_arg(args.psi0, tau)
    psi0.tau = tau.tolist()
    cal = CalibrationConfig(
        iterations=args.iterations,
        eps1=args.eps1,
        eps2=args.eps2,
        criterion=args.criterion,
        delta=args.delta,
        average_last=args.average_last,
    )
    rewards = fused_rollout_rewards(pipe, reward, tau, cfg_scale=cfg_scale, device=args.device)
    sampler = dense_reward_sampler(
        rewards, train_prompts, prompts_per_iteration=args.prompts, group_size=args.group_size, seed=args.seed
    )

    def report(h):
        print(
            f"[calibrate] iter {h['iteration']:3d}  psi {' '.join(f'{v:.2f}' for v in h['psi'])}  "
            f"pos-neg {' '.join(str(p - n) for p, n in zip(h['pos'], h['neg']))}",
            flush=True,
        )

    res = calibrate(sampler, psi0, cal, on_iteration=report)
    res.psi.meta.update({"reward": args.reward, "model": args.model, "history": res.history})
    res.psi.save(os.path.join(args.out, "psi.json"))
    plot_psi_history(res.history, os.path.join(args.out, "psi.png"))
    print(f"psi = {[round(v, 3) for v in res.psi.values]}\nwrote {args.out}/psi.json and psi.png")
    return 0


def cmd_visualize(args) -> int:
    import torch

    from ..method.advantages import dense_rewards
    from ..method.calibrate import sign_counts
    from ..method.rollout import fused_rollout
    from ..method.schedule import sde_noise_scales
    from ..models.pipeline import latent_rewards
    from ..util.plots import plot_dense_rewards

    reward = _reward(args.reward, args.reward_path, args.device, "visualize")  # its errors before any work
    os.makedirs(args.out, exist_ok=True)
    pipe, train_prompts, tau, cfg_scale = _model_and_grid(args)
    psi = _psi_arg(args.psi, tau)
    prompts = [args.prompt or train_prompts[0]] * args.group_size
    gen = torch.Generator().manual_seed(args.seed)
    x_T = torch.randn((len(prompts), *pipe.latent_shape), generator=gen).to(args.device)
    ro = fused_rollout(
        pipe.guide(prompts, cfg_scale, device=args.device), x_T, tau, sde_noise_scales(psi.tensor(), tau), generator=gen
    )
    R = latent_rewards(ro, prompts, pipe.decode, reward)
    pos, neg = sign_counts(dense_rewards(R))
    plot_dense_rewards(
        R, os.path.join(args.out, "dense_rewards.png"), title=f"{prompts[0]!r}, psi={psi.values[0]:.2f}…"
    )
    _save_images(
        pipe.decode(ro.reward_latents().flatten(0, 1)), os.path.join(args.out, "ode_endpoints.png"), ncol=args.steps + 1
    )
    with open(os.path.join(args.out, "dense_rewards.json"), "w") as f:
        json.dump(
            {
                "prompt": prompts[0],
                "tau": tau.tolist(),
                "psi": psi.values,
                "R": R.tolist(),
                "dR_pos": pos.tolist(),
                "dR_neg": neg.tolist(),
                "nfe_per_trajectory": ro.nfe_per_trajectory,
            },
            f,
            indent=1,
        )
    print(f"R_0 mean {R[:, -1].mean():.3f}; #pos/#neg per step {list(zip(pos.tolist(), neg.tolist()))}")
    print(f"wrote {args.out}/dense_rewards.png, ode_endpoints.png, dense_rewards.json")
    return 0


def _load_toml(path: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise InputError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"config file {path} is not valid TOML: {e}") from None


def _default_dtype(model: str, device: str) -> str:
    """bfloat16 for a diffusers model on CUDA (weights and autocast), float32 otherwise."""
    return "bfloat16" if model != "toy" and str(device).startswith("cuda") else "float32"


def cmd_train(args) -> int:
    from ..models.spec import ModelSpec
    from ..training import run_lock
    from ..training.checkpoint import resolve_checkpoint
    from ..training.config import TrainConfig, check_device_available

    raw = _load_toml(args.config) if args.config else {}
    resume_dir = None  # the out_dir of the checkpoint --resume names
    if args.resume:  # the run's own settings, then the TOML's and the flags' over them
        found = resolve_checkpoint(args.resume)
        resume_dir = os.path.dirname(os.path.abspath(found))
        raw = {**_saved_settings(found, resume_dir), **raw}
        if not args.out:
            raw["out_dir"] = resume_dir
    if args.model is not None:
        raw["model"] = args.model
    spec = ModelSpec.pop_from(raw, check_path=True)  # model and data keys; the rest are TrainConfig fields
    for key in (
        "out",
        "reward",
        "reward_path",
        "device",
        "iterations",
        "sde_window",
        "eval_rewards",
        "logger",
        "dist_timeout_s",
    ):
        val = getattr(args, key)
        if val is not None:
            raw["out_dir" if key == "out" else key] = val
    if spec.model != "toy":
        raw.setdefault("dtype", _default_dtype(spec.model, raw.get("device", "cpu")))
        raw.setdefault("eval_images", True)
    config = TrainConfig.from_dict(raw)
    check_device_available(config.device)  # before any work: a clear error, not the driver's
    rank0 = int(os.environ.get("RANK", 0)) == 0
    lock = None
    if rank0:  # before any work: the folder can take this run, no other run is in it, nothing is clobbered
        lock = run_lock.RunLock(config.out_dir).acquire()
    try:
        if rank0:
            _check_previous_run(config.out_dir, resume_dir, args.overwrite)
        return _train(args, spec, config, lock)
    finally:
        if lock is not None:
            lock.release()


def _saved_settings(checkpoint: str, out_dir: str) -> dict:
    """The settings of the run a checkpoint belongs to: its config.json and out_dir/model.json (keys that are
    still TrainConfig or ModelSpec fields; not out_dir)."""
    import dataclasses

    from ..models.spec import ModelSpec
    from ..training.config import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)} | {f.name for f in dataclasses.fields(ModelSpec)}
    saved = {}
    for path in (os.path.join(out_dir, "model.json"), os.path.join(checkpoint, "config.json")):
        if os.path.isfile(path):
            with open(path) as f:
                saved.update(json.load(f))
    return {k: v for k, v in saved.items() if k in known and k != "out_dir"}


def _check_previous_run(out_dir: str, resume_dir: str | None, overwrite: bool) -> None:
    """OutDirError if out_dir holds a run this command does not continue, unless --overwrite (which deletes
    that run's outputs)."""
    from ..training import run_lock

    if resume_dir is not None and os.path.samefile(resume_dir, out_dir):
        return
    previous = run_lock.previous_run(out_dir)
    if not previous:
        return
    if overwrite:
        run_lock.remove_previous_run(out_dir)
        print(f"[densegrpo] --overwrite: removed {', '.join(previous)} from {out_dir}", file=sys.stderr)
        return
    raise run_lock.OutDirError(
        f"out_dir {out_dir!r} holds a previous run ({', '.join(previous)}): continue it with --resume "
        f"{out_dir}, replace it with --overwrite, or choose another --out"
    )


def _train(args, spec, config, lock) -> int:
    """Load the model, train (resuming if asked), report; rank 0 holds `lock` on out_dir. → the exit code."""
    import torch

    from ..training import distributed
    from ..training.trainer import Trainer
    from ..util.atomic import atomic_write_json

    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        backend = "nccl" if config.device.startswith("cuda") else "gloo"
        distributed.init_process_group(backend, config.dist_timeout_s)
        if config.device.startswith("cuda"):
            config.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(config.device)
    reward = _reward(config.reward, config.reward_path, config.device)  # its errors before the model loads
    reward = _reward(config.reward, config.reward_path, config.device)  # its errors before the model loads
    pipe, train_prompts, eval_prompts = spec.load(config.device, config.dtype)
    if lock is not None:
        atomic_write_json(os.path.join(config.out_dir, "model.json"), spec.to_dict())
    stop = _stop_flag()
    trainer = Trainer(
        config,
        pipe,
        reward,
        train_prompts,
        eval_prompts,
        should_stop=stop.is_set,
        run_lock=lock,
    )
    if args.resume:
        trainer.load_checkpoint(args.resume)
    res = trainer.run(progress=not args.no_progress)
    for sig in (signal.SIGINT, signal.SIGTERM):  # saved and exported: a late signal must not turn the exit
        signal.signal(sig, signal.SIG_IGN)  # code into an abort (SIGKILL still ends a hung exit)
    if trainer.rank == 0:
        print(
            json.dumps(
                {
                    "out_dir": res.out_dir,
                    "iterations": trainer.iteration_done,
                    "stopped": res.stopped,
                    "final_eval": res.evals[-1] if res.evals else None,
                    "lora": res.lora_path,
                }
            )
        )
        if res.stopped:
            print(
                f"[densegrpo] stopped after iteration {trainer.iteration_done} of {config.iterations}; "
                f"checkpoint saved: continue with --resume {config.out_dir} (exit code {EXIT_STOPPED})",
                file=sys.stderr,
            )
    elif res.stopped:
        print(f"[densegrpo] rank {trainer.rank}: stopped after iteration {trainer.iteration_done}", file=sys.stderr)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return EXIT_STOPPED if res.stopped else EXIT_OK


def cmd_time_to_reward(args) -> int:
    from .time_to_reward import run_time_to_reward

    run_time_to_reward(
        args.out,
        quick=args.quick,
        seeds=args.seeds,
        threads=args.threads,
        methods=args.methods,
        workers=args.workers,
        train_s=args.train_s,
    )
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, quick=args.quick, device=args.device, seeds=args.seeds, workers=args.workers)
    return 0


def _int_list(text: str) -> tuple[int, ...]:
    """ "8,24" → (8, 24)."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _on_off(text: str) -> tuple[bool, ...]:
    from ..resources.memory import parse_on_off

    try:
        return tuple(parse_on_off(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_bench(args) -> int:
    import dataclasses

    from .benchmark import BenchConfig, run_bench, tiny_config

    if args.tiny:
        config = dataclasses.replace(tiny_config(args.out, args.device), fit_constants=args.fit_constants)
    else:
        sizes = {
            k: getattr(args, k)
            for k in (
                "width",
                "depth",
                "heads",
                "latent_size",
                "latent_channels",
                "context_tokens",
                "max_batch",
                "train_batch",
                "lora_rank",
                "prompts",
            )
            if getattr(args, k) is not None
        }
        config = BenchConfig(
            out=args.out,
            arch=args.arch,
            steps=args.steps,
            iterations=args.iterations,
            group_sizes=args.group_sizes or (args.group_size,),
            modes=args.modes,
            grad_checkpointing=args.grad_checkpointing,
            uncond_grad=not args.detach_uncond,
            dtype=args.dtype,
            device=args.device,
            memory=not args.no_memory,
            compare_naive=args.naive,
            stand_ins=args.stand_ins,
            fit_constants=args.fit_constants,
            budget_s=args.budget_s,
            **sizes,
        )
    run_bench(config)
    return 0


# ------------------------------------------------------------------------------ parser
REWARD_HELP = (
    "reward: toy, pickscore, pickscore_flowgrpo, hpsv2, aesthetic, clipscore, jpeg_compressibility, "
    "jpeg_incompressibility, a module:function, or a weighted sum 'pickscore=1.0,aesthetic=0.5'"
)
REWARD_PATH_HELP = (
    "the reward model's local file or folder (e.g. ComfyUI/models/reward_models/pickscore), or "
    "name=PATH,name=PATH for a weighted sum; nothing is downloaded"
)


MODEL_HELP = (
    "model: toy (built in) or the path of a diffusers pipeline folder (SD3/SD3.5, FLUX.1, FLUX.2, Chroma, "
    "Qwen-Image, Z-Image; model_index.json decides; loaded with local files only)"
)


def build_parser() -> argparse.ArgumentParser:
    from ..method.schedule import GRIDS

    p = argparse.ArgumentParser(
        prog="python -m densegrpo_core",
        description="DenseGRPO: dense-reward GRPO for flow-matching text-to-image models.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, steps=10):
        sp.add_argument("--model", default="toy", help=MODEL_HELP)
        sp.add_argument("--resolution", type=int, default=None, help="image side in pixels (diffusers models)")
        sp.add_argument(
            "--transformer-file",
            default=None,
            help="single-file transformer checkpoint replacing the diffusers folder's",
        )
        sp.add_argument(
            "--dtype",
            choices=["float32", "bfloat16"],
            default=None,
            help="model weights and compute (default: bfloat16 for diffusers models on CUDA)",
        )
        sp.add_argument(
            "--prompts-file",
            default=None,
            help="training prompts, one a line (a diffusers model encodes them at load time)",
        )
        sp.add_argument("--device", default="cpu", help="cpu or cuda")
        sp.add_argument("--steps", type=int, default=steps, help="sampling steps T")
        sp.add_argument("--shift", type=float, default=None, help="grid shift (default: the model's)")
        sp.add_argument(
            "--grid",
            choices=GRIDS,
            default="sd3",
            help="flow-time grid: sd3 = diffusers' SD3 scheduler, as Flow-GRPO samples and ComfyUI's "
            "`normal` (default); shifted_linspace = shift(linspace(1, 0, T+1))",
        )
        sp.add_argument("--cfg", type=float, default=None, help="CFG scale (default: the model's)")
        sp.add_argument("--seed", type=int, default=0, help="random seed")
        sp.add_argument("--reward", default="toy", help=REWARD_HELP)
        sp.add_argument("--reward-path", type=_reward_path_arg, default=None, help=REWARD_PATH_HELP)

    sp = sub.add_parser("demo", help="calibrate ψ, train DenseGRPO and Flow-GRPO on the toy task, compare")
    sp.add_argument("--out", default="demo_out", help="output folder")
    sp.add_argument("--quick", action="store_true", help="small budget, one seed (a few minutes on 2 CPU cores)")
    sp.add_argument("--device", default="cpu", help="cpu or cuda")
    sp.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default: 0 quick, 0 1 2 full)")
    sp.add_argument(
        "--workers",
        type=int,
        default=None,
        help="train the (method, seed) runs in this many processes, CPU threads split between them "
        "(default: one per CPU core on the CPU, one on CUDA; the figures do not depend on it)",
    )
    sp.set_defaults(fn=cmd_demo)

    sp = sub.add_parser(
        "time-to-reward",
        help="held-out reward vs wall-clock seconds and NFE: Flow-GRPO(-Fast), DenseGRPO (+ window, ODE_1, ODE_2)",
    )
    sp.add_argument("--out", default="time_to_reward_out", help="output folder")
    sp.add_argument("--quick", action="store_true", help="1 seed, 30 training seconds per method (a pipeline check)")
    sp.add_argument("--seeds", type=_int_list, default=None, help="seeds, e.g. 0,1,2 (default 0,1,2; --quick: 0)")
    sp.add_argument("--threads", type=int, default=1, help="torch threads of every run")
    sp.add_argument(
        "--workers",
        type=int,
        default=1,
        help="runs at once, each in its own process with --threads threads (default 1: one at a time); wall "
        "times compare when every run has the same threads and load",
    )
    sp.add_argument("--train-s", type=float, default=None, help="training seconds per run (default 900; --quick: 30)")
    sp.add_argument("--methods", type=lambda t: tuple(t.split(",")), default=None, help="a subset of the methods")
    sp.set_defaults(fn=cmd_time_to_reward)

    sp = sub.add_parser("sample", help="generate images with the toy model (ODE, or SDE with --psi)")
    common(sp)
    sp.add_argument("--prompt", action="append", required=True, help="prompt (repeat for several)")
    sp.add_argument("--num", type=int, default=4, help="images per prompt")
    sp.add_argument("--psi", default=None, help="sample with the SDE: ψ as number, list or psi.json")
    sp.add_argument("--lora", default=None, help="a LoRA .safetensors written by train/demo")
    sp.add_argument("--out", default="samples.png", help="output PNG")
    sp.set_defaults(fn=cmd_sample)

    sp = sub.add_parser("calibrate", help="Algorithm 1: calibrate ψ(t); writes psi.json and psi.png")
    common(sp)
    sp.add_argument("--out", default="calibration", help="output folder")
    sp.add_argument("--psi0", default="0.7", help="initial ψ: number, list or psi.json")
    sp.add_argument("--iterations", type=int, default=20, help="calibration iterations")
    sp.add_argument("--prompts", type=int, default=4, help="prompts per iteration")
    sp.add_argument("--group-size", type=int, default=6, help="samples per prompt (N = prompts × group size)")
    sp.add_argument("--eps1", type=float, default=2.0, help="literal balance threshold ε1")
    sp.add_argument("--eps2", type=float, default=0.01, help="ψ increment ε2")
    sp.add_argument("--criterion", choices=["literal", "relative"], default="literal", help="balance criterion")
    sp.add_argument("--delta", type=float, default=0.1, help="relative criterion threshold δ")
    sp.add_argument("--average-last", type=int, default=5, help="result = mean ψ of the last N iterations")
    sp.set_defaults(fn=cmd_calibrate)

    sp = sub.add_parser("visualize", help="R_t and ΔR_t per trajectory (paper Fig. 3) for one prompt group")
    common(sp)
    sp.add_argument("--prompt", default=None, help="prompt (default: the first training prompt)")
    sp.add_argument("--psi", default=None, help="ψ: number, list or psi.json (default 0.7)")
    sp.add_argument("--group-size", type=int, default=8, help="trajectories")
    sp.add_argument("--out", default="visualize", help="output folder")
    sp.set_defaults(fn=cmd_visualize)

    sp = sub.add_parser(
        "train",
        help="GRPO-train a LoRA (config in TOML; keys = TrainConfig fields + the model/data keys of data.ModelSpec)",
    )
    sp.add_argument("--config", default=None, help="TOML file with TrainConfig fields")
    sp.add_argument(
        "--resume",
        default=None,
        help="continue a run: its out_dir (the newest complete checkpoint in it) or a checkpoint folder "
        "(out_dir/checkpoint); the run continues in that out_dir unless --out says otherwise",
    )
    sp.add_argument(
        "--overwrite",
        action="store_true",
        help="out_dir holds a previous run: delete its metrics, LoRA, checkpoints and samples and start afresh "
        "(without it such an out_dir is refused)",
    )
    sp.add_argument(
        "--dist-timeout-s",
        type=float,
        default=None,
        help="under torchrun: seconds a collective waits for the other ranks before the run ends naming the "
        "rank that did not arrive (overrides config; default 600)",
    )
    sp.add_argument("--model", default=None, help=MODEL_HELP + " (overrides config)")
    sp.add_argument("--out", default=None, help="output folder (overrides out_dir)")
    sp.add_argument("--reward", default=None, help=REWARD_HELP + " (overrides config)")
    sp.add_argument("--reward-path", type=_reward_path_arg, default=None, help=REWARD_PATH_HELP + " (overrides config)")
    sp.add_argument("--device", default=None, help="cpu or cuda (overrides config)")
    sp.add_argument("--iterations", type=int, default=None, help="total iterations (overrides config)")
    sp.add_argument(
        "--sde-window", type=int, default=None, help="SDE window size W, 0 = every step SDE (overrides config)"
    )
    sp.add_argument(
        "--eval-rewards",
        type=lambda t: tuple(r for r in t.split(",") if r),
        default=None,
        help="held-out rewards that also score every evaluation, e.g. aesthetic,clipscore (overrides config)",
    )
    sp.add_argument(
        "--logger",
        choices=("none", "tensorboard"),
        default=None,
        help="also log to TensorBoard (out_dir/tensorboard; needs the tensorboard package) (overrides config)",
    )
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.set_defaults(fn=cmd_train)

    sp = sub.add_parser(
        "bench",
        help="seconds and peak memory per stage per mode; NFE (fused vs naive)",
        description="Measure real trainer iterations: seconds and peak memory of rollout, decode + "
        "reward and update, per mode, group size and checkpointing setting; writes "
        "bench.json and bench.md (docs/benchmarks.md explains the method).",
    )
    sp.add_argument("--out", default="bench_out", help="output folder (bench.json, bench.md)")
    sp.add_argument(
        "--arch",
        default="toy",
        help="toy: the shipped toy model; dit: the core joint-attention DiT with random weights "
        "(SD3.5-M size unless --width/--depth/...); ComfyUI's MMDiT: run bench/comfy_mmdit.py "
        "--comfyui PATH with these options (it registers arch 'mmdit')",
    )
    sp.add_argument("--tiny", action="store_true", help="a seconds-long smoke run of the whole bench (tiny DiT)")
    sp.add_argument("--width", type=int, default=None, help="DiT hidden size (default 1536)")
    sp.add_argument("--depth", type=int, default=None, help="DiT blocks (default 24)")
    sp.add_argument("--heads", type=int, default=None, help="attention heads (default width / 64)")
    sp.add_argument("--latent-size", type=int, default=None, help="latent side (default 64 = 512 px)")
    sp.add_argument("--latent-channels", type=int, default=None, help="latent channels (default 16)")
    sp.add_argument("--context-tokens", type=int, default=None, help="text tokens (default 154)")
    sp.add_argument("--steps", type=int, default=10, help="sampling steps T")
    sp.add_argument("--group-size", type=int, default=8, help="G (one value; see --group-sizes)")
    sp.add_argument("--group-sizes", type=_int_list, default=None, help="several G, e.g. 8,16,24")
    sp.add_argument("--prompts", type=int, default=None, help="prompts per iteration (default 4)")
    sp.add_argument(
        "--modes",
        type=lambda t: tuple(t.split(",")),
        default=None,
        help="advantage modes, e.g. flow_grpo,dense_grpo (default: all four for toy, those two otherwise)",
    )
    sp.add_argument("--grad-checkpointing", type=_on_off, default=(False,), help="on, off or both")
    sp.add_argument(
        "--detach-uncond",
        action="store_true",
        help="detach CFG's unconditional pass (less memory, a different gradient; default: the full CFG gradient, "
        "as Flow-GRPO's final code)",
    )
    sp.add_argument("--max-batch", type=int, default=None, help="rows per rollout forward call (default 256)")
    sp.add_argument("--train-batch", type=int, default=None, help="trajectories per update minibatch (default 8)")
    sp.add_argument("--lora-rank", type=int, default=None, help="LoRA rank (default 32)")
    sp.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="bfloat16: weights in bf16 and autocast (log-probs and rewards stay float32)",
    )
    sp.add_argument("--device", default="cpu", help="cpu or cuda")
    sp.add_argument("--iterations", type=int, default=3, help="timed iterations per run (after one warm-up)")
    sp.add_argument(
        "--no-memory", action="store_true", help="skip peak-memory measurement (CPU: the profiled iteration)"
    )
    sp.add_argument(
        "--naive",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time fused vs naive rollouts (default: toy only)",
    )
    sp.add_argument(
        "--stand-ins",
        choices=["auto", "full", "small"],
        default="auto",
        help="decoder/reward stand-ins: full (SD3 VAE, ViT-H/14 sized) or small (auto: full from width 1024)",
    )
    sp.add_argument(
        "--fit-constants",
        action="store_true",
        help="refit the estimator constants for this device kind and write them into estimate_constants.json",
    )
    sp.add_argument("--budget-s", type=float, default=None, help="skip the remaining runs once over this many seconds")
    sp.set_defaults(fn=cmd_bench)
    return p


def main(argv=None) -> int:
    from ..training.distributed import RankTimeout
    from ..util.atomic import WriteFailed

    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "device", None) is not None:  # train checks its config's device (TOML or --device)
            from ..training.config import check_device_available

            check_device_available(args.device)
        return args.fn(args)
    except (InputError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("interrupted by a second signal: aborted without saving (the last checkpoint is intact)", file=sys.stderr)
        return EXIT_ABORTED
    except (WriteFailed, RankTimeout) as e:
        print(f"failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:  # noqa: BLE001 - the CLI reports any failure as exit code 1
        print(f"failed: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
