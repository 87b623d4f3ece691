"""``mmexplain train NAME``: train, evaluate and save a shipped model; or only evaluate a checkpoint.

NAME is any shipped model: classifier, captioner, vqa (CNN models, fresh ShapeWorld
scenes every step) or tiny-ved, tiny-vilt (tiny transformers models). Every option
left out takes the model's recipe (``mmexplain.training.run.RECIPES``; printed when
training starts). The new checkpoint goes to ``--out``, or to a new
``runs/NAME-<time>`` folder, never over the shipped ``models/NAME`` unless asked:
an existing folder is replaced (whole, atomically, after training) only with ``--force``.

Bad input (``--steps 0``, ``--lr -1``, an unknown NAME, an option of another model)
and a diverged run (non-finite loss or weights) end with a one-line error and exit
status 2, before anything is written.

Example:
    $ mmexplain train captioner --steps 2500 --threads 1
    $ mmexplain train tiny-ved --minutes 20 --config enc_layers=3 --cache-dir /tmp/swcache
    $ mmexplain train vqa --evaluate-only                  # held-out metrics of models/vqa
    $ mmexplain train captioner --out models/captioner --force   # replace the shipped one
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

from .common import CLIError, add_threads, apply_threads, check_out, nonnegative_int, positive_int
from ..errors import InputError

__all__ = ["add_train_command"]

MODELS = ("classifier", "captioner", "vqa", "tiny-ved", "tiny-vilt")  # the same as mmexplain.zoo.ALL_NAMES
VLMS = ("tiny-llava", "tiny-qwen2vl", "tiny-vlm")  # mmexplain.training.tiny_vlms (tiny-vlm is tiny-llava)
CNN = MODELS[:3]

# mmexplain.training.run.recipe_table(), kept here so that building the parser imports no training code
# (tests/test_zoo.py checks that the two agree)
RECIPES = """\
  NAME        --steps  --batch-size  --lr   --weight-decay  --warmup  --scenes   --n-train
  classifier  1500     32            0.003  0.0001          3%        1000 test  -
  captioner   2500     32            0.003  0.0001          3%        1000 test  -
  vqa         2500     24            0.002  0.0001          3%        1000 test  -
  tiny-ved    4000     64            0.001  0.01            200       500 val    20000
  tiny-vilt   6000     32            0.001  0.01            200       300 val    10000"""

# options that only training reads, as (flag, argparse dest)
TRAINING_OPTIONS = (("--steps", "steps"), ("--minutes", "minutes"), ("--batch-size", "batch_size"), ("--lr", "lr"),
                    ("--weight-decay", "weight_decay"), ("--warmup", "warmup"), ("--seed", "seed"),
                    ("--log-every", "log_every"), ("--init", "init"), ("--init-encoder", "init_encoder"),
                    ("--config", "config"), ("--questions-per-scene", "questions_per_scene"),
                    ("--n-train", "n_train"), ("--out", "out"))


def add_train_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``mmexplain train NAME [--steps N] [--minutes M] ... [--out DIR [--force]] [--evaluate-only [--from DIR]]``."""
    p = subparsers.add_parser(
        "train", help="train a shipped model on ShapeWorld (or --evaluate-only a checkpoint)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train NAME (classifier, captioner, vqa, tiny-ved, tiny-vilt) on ShapeWorld with the shared\n"
                    "loop (AdamW, warm-up + cosine, gradient clipping, divergence check), evaluate it on held-out\n"
                    "scenes and write the checkpoint folder with its CARD.md (to a new runs/NAME-<time> unless\n"
                    "--out is given; an existing folder is replaced only with --force).",
        epilog="defaults per model (options left out):\n" + RECIPES + "\n\nexamples:\n"
               "  mmexplain train captioner --steps 2500 --threads 1\n"
               "  mmexplain train tiny-ved --minutes 20 --config enc_layers=3 --cache-dir /tmp/swcache\n"
               "  mmexplain train vqa --evaluate-only              # held-out metrics of models/vqa")
    p.add_argument("name", metavar="NAME", help="classifier, captioner, vqa, tiny-ved, tiny-vilt, tiny-llava or "
                                                "tiny-qwen2vl")
    loop = p.add_argument_group("training budget and schedule")
    loop.add_argument("--steps", metavar="N", type=positive_int,
                      help="optimizer steps (with --minutes: an upper limit)")
    loop.add_argument("--minutes", metavar="M", type=float,
                      help="wall-clock budget in minutes; the schedule follows it (0: none)")
    loop.add_argument("--batch-size", metavar="N", type=positive_int, help="scenes (tiny-vilt: questions) per step")
    loop.add_argument("--lr", metavar="LR", type=float, help="peak learning rate (AdamW)")
    loop.add_argument("--weight-decay", metavar="WD", type=float, help="AdamW weight decay of the weight matrices")
    loop.add_argument("--warmup", metavar="N", type=nonnegative_int,
                      help="linear warm-up steps (CNN models: 3%% of --steps)")
    loop.add_argument("--seed", metavar="S", type=nonnegative_int,
                      help="seeds the initialisation, the batches and dropout (default 0)")
    add_threads(loop, default=1)
    loop.add_argument("--log-every", metavar="N", type=nonnegative_int,
                      help="a progress line every N steps (0: none; default 100)")
    start = p.add_argument_group("starting point and architecture")
    start.add_argument("--init", "--resume", metavar="DIR", dest="init",
                       help="continue from this checkpoint folder (its weights; a fresh optimizer and schedule)")
    start.add_argument("--init-encoder", metavar="DIR",
                       help="CNN models: a classifier checkpoint whose CNN starts the encoder ('none': random; "
                            "default: models/classifier for vqa, random otherwise)")
    start.add_argument("--config", metavar="KEY=VALUE", action="append",
                       help="change one architecture setting of a fresh model (repeatable), e.g. enc_layers=3")
    data = p.add_argument_group("data")
    data.add_argument("--questions-per-scene", metavar="N", type=nonnegative_int,
                      help="vqa: questions of distinct kinds per training scene (default 0: every question)")
    data.add_argument("--n-train", metavar="N", type=positive_int,
                      help="tiny-ved / tiny-vilt: pre-generated training scenes")
    data.add_argument("--cache-dir", metavar="DIR", help="tiny-ved / tiny-vilt: cache generated scenes here")
    ev = p.add_argument_group("evaluation")
    ev.add_argument("--scenes", "--n", "--n-val", type=positive_int, dest="n", metavar="N",
                    help="held-out scenes (CNN models: test split, default 1000; tiny models: val split)")
    ev.add_argument("--evaluate-only", "--eval-only", action="store_true", dest="evaluate_only",
                    help="no training: print the held-out metrics of the checkpoint in --from")
    ev.add_argument("--from", metavar="DIR", dest="source",
                    help="with --evaluate-only: the checkpoint folder (default: the shipped models/NAME)")
    ev.add_argument("--write-card", action="store_true",
                    help="with --evaluate-only, CNN models: rewrite CARD.md and the metrics of --from (needs --force)")
    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", help="checkpoint folder to write (default: a new runs/NAME-<time>)")
    out.add_argument("--force", action="store_true", help="replace an existing --out folder (or --write-card)")
    p.set_defaults(func=_train_handler)
    return p


def _check_float(flag: str, value: float | None, *, positive: bool = False) -> None:
    """A float option must be finite and >= 0 (``positive``: > 0)."""
    if value is not None and not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
        raise CLIError(f"{flag} must be a finite number {'>' if positive else '>='} 0, got {value!r}")


def _parse_config(name: str, items: list[str]) -> dict[str, Any]:
    """``["enc_layers=3", "widths=16,32,64"]`` -> typed fields of the model's config dataclass."""
    from .. import zoo

    fields = {f.name: f for f in dataclasses.fields(zoo.config_class(name))}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise CLIError(f"--config: expected KEY=VALUE, got {item!r}")
        if key not in fields:
            raise CLIError(f"--config: {name} has no setting {key!r}; settings: {', '.join(fields)}")
        default = fields[key].default
        try:
            if isinstance(default, bool):
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise InputError(text)
                out[key] = text.lower() in ("true", "1", "yes")
            elif isinstance(default, tuple):
                out[key] = tuple(type(default[0])(v) for v in text.split(","))
            else:
                out[key] = type(default)(text)
        except ValueError as exc:
            kind = {int: "an integer", float: "a number", bool: "true or false"}.get(type(default), "a value")
            raise CLIError(f"--config {key}: expected {kind} like {default!r}, got {text!r}") from exc
    return out


def _default_out(name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out, k = Path("runs") / f"{name}-{stamp}", 2
    while out.exists():
        out, k = Path("runs") / f"{name}-{stamp}-{k}", k + 1
    return out


def _command_line(args: argparse.Namespace) -> str:
    """The command in its canonical spelling (written into the card)."""
    parts = ["mmexplain", "train", args.name]
    for flag, dest in TRAINING_OPTIONS + (("--force", "force"), ("--threads", "threads"),
                                         ("--cache-dir", "cache_dir"), ("--scenes", "n")):
        value = getattr(args, dest)
        if value is None or value is False:
            continue
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [p for item in value for p in (flag, item)]
        else:
            parts += [flag, str(value)]
    return " ".join(parts)


def _evaluate_only(args: argparse.Namespace) -> int:
    import json

    from ..training import evaluate as ev
    from ..training.run import evaluate_checkpoint

    given = [flag for flag, dest in TRAINING_OPTIONS if getattr(args, dest) not in (None, False)]
    if given:
        raise CLIError(f"{given[0]}: not with --evaluate-only (it trains nothing; give the checkpoint with --from)")
    if args.cache_dir is not None and args.name in CNN:
        raise CLIError(f"--cache-dir: only for tiny-ved and tiny-vilt, not {args.name}")
    if args.write_card and args.name not in CNN:
        raise CLIError(f"--write-card: only for {', '.join(CNN)}, not {args.name}")
    if args.write_card and not args.force:
        raise CLIError("--write-card rewrites the checkpoint's CARD.md and config.json; add --force to do it")
    if args.source is not None and not Path(args.source).is_dir():
        raise CLIError(f"--from: no checkpoint folder {args.source!r}")
    metrics = evaluate_checkpoint(args.name, args.source, n=args.n, cache_dir=args.cache_dir,
                                  write_card=args.write_card)
    print(json.dumps(metrics, indent=2))
    print(ev.headline(args.name, metrics))
    return 0


def _check_options(args: argparse.Namespace) -> None:
    for flag, value in (("--from", args.source), ("--write-card", args.write_card or None)):
        if value is not None:
            raise CLIError(f"{flag}: only with --evaluate-only (to continue training a checkpoint use --init)")
    if args.name not in CNN:
        for flag, value in (("--init-encoder", args.init_encoder), ("--questions-per-scene", args.questions_per_scene)):
            if value is not None:
                raise CLIError(f"{flag}: only for {', '.join(CNN)}, not {args.name}")
    else:
        for flag, value in (("--n-train", args.n_train), ("--cache-dir", args.cache_dir)):
            if value is not None:
                raise CLIError(f"{flag}: only for tiny-ved and tiny-vilt, not {args.name}")
        if args.questions_per_scene is not None and args.name != "vqa":
            raise CLIError(f"--questions-per-scene: only for vqa, not {args.name}")
    _check_float("--lr", args.lr, positive=True)
    _check_float("--minutes", args.minutes)
    _check_float("--weight-decay", args.weight_decay)
    if args.init is not None and args.config:
        raise CLIError("--config: not with --init (a continued model keeps its architecture)")
    if args.init is not None and not Path(args.init).is_dir():
        raise CLIError(f"--init: no checkpoint folder {args.init!r}")
    if args.init_encoder not in (None, "none") and not Path(args.init_encoder).is_dir():
        raise CLIError(f"--init-encoder: no checkpoint folder {args.init_encoder!r} (or give 'none')")


def _train_vlm(args: argparse.Namespace) -> int:
    """tiny-llava / tiny-qwen2vl: the three-stage recipe (``--minutes`` scales its stages), or --evaluate-only."""
    import json

    from ..training import tiny_vlms as T

    name = "tiny-llava" if args.name == "tiny-vlm" else args.name
    apply_threads(args)
    n = args.n or 200
    if args.evaluate_only:
        from .. import zoo
        from ..training.tiny_vlms_eval import evaluate

        print(json.dumps(evaluate(zoo.load(name, args.source), n=n), indent=1))
        return 0
    for flag, dest in TRAINING_OPTIONS:
        if dest not in ("minutes", "seed", "n_train", "out", "log_every") and getattr(args, dest) not in (None, False):
            raise CLIError(f"{flag}: not for {name} (its recipe: --minutes, --seed, --n-train, --scenes)")
    _check_float("--minutes", args.minutes)
    out = check_out(args.out, kind="folder") if args.out is not None else _default_out(name)
    if out.exists() and not args.force:
        raise CLIError(f"--out {str(out)!r} exists; add --force to replace it (or choose another folder)")
    base = T.recipe_for(name)
    scale = 1.0 if not args.minutes else args.minutes / sum(base.minutes)
    recipe = dataclasses.replace(base, minutes=tuple(m * scale for m in base.minutes), seed=args.seed or 0,
                                 n_train=args.n_train or base.n_train)
    print(f"writing to {out}", flush=True)
    metrics = T.train_and_save(name, out, recipe=recipe, n=n, command=_command_line(args),
                               cache_dir=None if args.cache_dir is None else Path(args.cache_dir),
                               log=lambda line: print(line, flush=True))
    print(json.dumps({k: metrics[k] for k in ("caption_exact", "word_accuracy", "answer_accuracy")}))
    print(f"wrote {out}")
    return 0


def _train_handler(args: argparse.Namespace) -> int:
    from .. import zoo

    if args.name in VLMS:
        return _train_vlm(args)
    try:
        zoo.check_name(args.name, what="NAME")
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.evaluate_only:
        apply_threads(args)
        return _evaluate_only(args)
    _check_options(args)
    out = check_out(args.out, kind="folder") if args.out is not None else _default_out(args.name)
    if out.exists() and not args.force:
        raise CLIError(f"--out {str(out)!r} exists; add --force to replace it (or choose another folder)")
    encoder = args.init_encoder
    if encoder is None and args.name == "vqa" and args.init is None:
        encoder = str(zoo.default_root() / "classifier")
    from ..training.loop import TrainingDiverged
    from ..training.run import TrainRequest, loop_config, train_and_save

    overrides = {k: getattr(args, k) for k in ("steps", "minutes", "batch_size", "lr", "weight_decay", "warmup",
                                               "seed", "log_every")}
    request = TrainRequest(args.name, overrides=overrides, arch=_parse_config(args.name, args.config or []),
                           init=None if args.init is None else Path(args.init),
                           init_encoder=None if encoder in (None, "none") else Path(encoder),
                           questions_per_scene=args.questions_per_scene or 0, n_train=args.n_train, n=args.n,
                           cache_dir=None if args.cache_dir is None else Path(args.cache_dir),
                           command=_command_line(args))
    apply_threads(args)
    print(f"writing to {out}" + ("" if args.out else " (choose the folder with --out)"), flush=True)
    try:
        train_and_save(request, out, log=lambda line: print(line, flush=True))
    except TrainingDiverged as exc:
        lr = loop_config(args.name, overrides).lr
        raise CLIError(f"{exc}; nothing was saved: try a lower --lr than {lr:g}") from exc
    print(f"wrote {out}")
    return 0
