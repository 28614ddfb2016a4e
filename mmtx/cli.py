"""The `mmtx` command line: train, run, models, caption, zeroshot, sample, demo."""

from __future__ import annotations

import argparse
import errno
import shlex
import signal
import sys


def _models(args) -> None:
    from .models import list_models, model_info
    from .models.summary import count_model_params

    names = list_models(args.pattern, family=args.family)
    width = max((len(n) for n in names), default=10)
    print(f"{'model':<{width}}  {'family':<10} {'task':<20} {'params':>12}")
    for name in names:
        info = model_info(name)
        print(f"{name:<{width}}  {info.family:<10} {info.task or '-':<20} "
              f"{count_model_params(name):>12,}")


def _train(args) -> None:
    from .train.cli import train_command

    train_command(args.config, overrides=args.set, run_dir=args.run_dir, resume=args.resume)


def _run(args) -> None:
    from .experiments import run_experiment
    from .train.signals import TrainingInterrupted

    try:
        run_experiment(args.experiment, out_dir=args.out, overrides=args.set)
    except TrainingInterrupted as e:  # finished runs are kept, the others resume on a rerun
        words = ["mmtx", "run", args.experiment, *(["--out", args.out] if args.out else []),
                 *(w for o in args.set for w in ("--set", o))]
        raise TrainingInterrupted(f"{e}; continue with: {shlex.join(words)}", e.signum) from None


def _caption(args) -> None:
    from .predict import caption_command

    caption_command(args.run_dir, args.images, beam=args.beam, attn_out=args.attn)


def _zeroshot(args) -> None:
    from .predict import zeroshot_command

    labels = [w.strip() for w in args.labels.split(",") if w.strip()]
    zeroshot_command(args.run_dir, args.images, labels, template=args.template)


def _sample(args) -> None:
    from .sample import sample_command

    sample_command(args.run_dir, classes=args.classes, prompts=args.prompts, n=args.n,
                   steps=args.steps, cfg_scale=args.cfg_scale, sampler=args.sampler, seed=args.seed,
                   out=args.out, out_dir=args.out_dir, vae=args.vae)


def _demo(args) -> None:
    from .viz.demo import main as demo_main

    demo_main(out=args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmtx", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one model from a YAML config")
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=3e-4 (repeatable)")
    p.add_argument("--run-dir", default=None, help="where checkpoints and metrics go")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.set_defaults(fn=_train)

    p = sub.add_parser("run", help="run an experiment file (a set of trainings) and report")
    p.add_argument("experiment")
    p.add_argument("--out", default=None, help="output directory (default runs/<name>/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the experiment file (repeatable)")
    p.set_defaults(fn=_run)

    p = sub.add_parser("models", help="list registered models with parameter counts")
    p.add_argument("pattern", nargs="?", default="*")
    p.add_argument("--family", default=None, help="only this family, e.g. vit, cnn, text")
    p.set_defaults(fn=_models)

    p = sub.add_parser("caption", help="caption images with a trained captioner run")
    p.add_argument("run_dir")
    p.add_argument("images", nargs="+")
    p.add_argument("--beam", type=int, default=1, help="beam size (1: greedy)")
    p.add_argument("--attn", default=None, metavar="PNG",
                   help="also draw each word's attention over its image")
    p.set_defaults(fn=_caption)

    p = sub.add_parser("zeroshot", help="rank labels for images with a trained CLIP run")
    p.add_argument("run_dir")
    p.add_argument("images", nargs="+")
    p.add_argument("--labels", required=True, help="comma-separated, e.g. circle,square")
    p.add_argument("--template", default="{}", help='prompt around each label, e.g. "a {}"')
    p.set_defaults(fn=_zeroshot)

    p = sub.add_parser("sample", help="generate images with a trained generation run")
    p.add_argument("run_dir")
    p.add_argument("--class", dest="classes", action="append", default=None, metavar="NAME",
                   help='class to draw, e.g. "red circle" (repeatable; cycled over --n)')
    p.add_argument("--prompt", dest="prompts", action="append", default=None, metavar="TEXT",
                   help="caption to draw, for caption-conditioned runs (repeatable)")
    p.add_argument("--n", type=int, default=16, help="number of images")
    p.add_argument("--steps", type=int, default=50, help="sampler steps")
    p.add_argument("--cfg", dest="cfg_scale", type=float, default=3.0, metavar="SCALE",
                   help="classifier-free guidance scale (1: none; a finite number >= 0)")
    p.add_argument("--sampler", default=None, choices=["euler", "heun", "ddim", "ddpm"],
                   help="default: the run's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="grid.png", help="grid PNG")
    p.add_argument("--out-dir", default=None, help="also one PNG per image here")
    p.add_argument("--vae", default=None, metavar="PATH",
                   help="a latent run's AutoencoderKL folder, if moved since training")
    p.set_defaults(fn=_sample)

    p = sub.add_parser("demo", help="attention worked example and a heatmap PNG")
    p.add_argument("--out", default="attention_demo.png")
    p.set_defaults(fn=_demo)
    return parser


# errno of an OSError that is the machine's state, not a bug: reported in one line
_NO_WRITE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _end_process_group() -> None:
    """Under a launcher (torchrun, accelerate launch): shut the process group down before the
    interpreter exits, as torch asks, rather than leave its threads to the exit's teardown."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    from .train.signals import on_stop_signals, stop_now

    try:
        # SIGTERM stops a command as Ctrl-C does: a training loop saves a checkpoint first
        # (its own handler), elsewhere it stops at once; either way one line, no traceback.
        with on_stop_signals(stop_now):
            args.fn(args)
        _end_process_group()
    except (ValueError, FileNotFoundError) as e:  # a user's mistake: say it, without a traceback
        print(f"mmtx {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a full disk, a read-only or foreign folder: one line naming the file
        if e.errno not in _NO_WRITE:
            raise
        print(f"mmtx {args.command}: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as e:
        print(f"mmtx {args.command}: {e or 'interrupted'}", file=sys.stderr)
        sys.exit(128 + getattr(e, "signum", signal.SIGINT))


if __name__ == "__main__":
    main()
