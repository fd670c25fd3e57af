"""`tempsamp train RECIPE [key=value ...]` and `tempsamp plot RUN_DIR`."""

from __future__ import annotations

import os
import sys

from tempsamp.errors import positive_int


def register(sub) -> None:
    p = sub.add_parser("train", help="RL fine-tuning with TempSamp-R1 or a baseline (a YAML recipe + key=value overrides)")
    p.add_argument("recipe", help="recipe file, or the name of a shipped recipe (e.g. charades_tempsamp, tiny_cpu)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override any recipe key, e.g. strategy=grpo learning_rate=2e-6")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest intact checkpoint in output_dir (damaged ones are named and passed "
                        "over); without one: an error, unless --allow-fresh")
    p.add_argument("--allow-fresh", action="store_true", help="with --resume: start at step 0 when there is no checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the training run already in output_dir (its checkpoints, metrics, logs and final-model; "
                        "other files stay); without it, or --resume, such a folder is refused")
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="stop after this many steps in total, with a checkpoint (the schedule still spans the recipe)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "--num-processes", type=positive_int, default=1, metavar="N",
        help="processes on this machine, started with torchrun (NCCL on GPUs, gloo on a CPU); the config key "
        "`distributed` (ddp, fsdp, zero2, zero3, zero3_offload) says how they share the model. Several nodes: "
        "`torchrun --nnodes ... -m tempsamp train ...`",
    )
    p.set_defaults(func=run_train)

    q = sub.add_parser("plot", help="turn a run's metrics.jsonl into PNG curves")
    q.add_argument("run_dir")
    q.add_argument("--out", default=None, help="folder for the PNGs (default RUN_DIR/plots)")
    q.set_defaults(func=run_plot)


def run_train(args) -> int:
    import yaml

    from tempsamp.train.config import load_config

    cfg = load_config(args.recipe, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    from tempsamp.errors import UserError, ensure_output_dir
    from tempsamp.train import runlock

    if args.overwrite and args.resume:
        raise UserError("--overwrite and --resume contradict each other: --resume continues the run in output_dir, "
                        "--overwrite replaces it; give one")
    under_launcher = "LOCAL_RANK" in os.environ
    from tempsamp.models.tiny import NAMED_SPECS

    if cfg.model not in NAMED_SPECS:  # say at once, before any process or video is opened
        from tempsamp.evaluation.run_cli import check_model_folder

        check_model_folder(cfg.model, "model=")
    # The checks of output_dir run once, before any process starts: in this process, or, under a
    # torchrun started by hand, in rank 0 (the others are stopped by torchrun when it fails).
    if not under_launcher or (os.environ.get("RANK", "0") == "0" and runlock.HELD_BY_LAUNCHER not in os.environ):
        if args.resume and not args.allow_fresh:  # before loading anything: say it at once
            from tempsamp.train.checkpoint import latest_checkpoint

            if latest_checkpoint(cfg.output_dir) is None:
                raise UserError(f"--resume: no intact checkpoint in {cfg.output_dir}; check output_dir, or add "
                                "--allow-fresh to start at step 0")
        runlock.check_fresh_start(cfg.output_dir, resume=args.resume, overwrite=args.overwrite, say=_say)
        created = not os.path.exists(cfg.output_dir)
        ensure_output_dir(cfg.output_dir, "output_dir")
        runlock.acquire(cfg.output_dir, _say, inheritable=args.num_processes > 1 and not under_launcher, created=created)
    if args.num_processes > 1 and not under_launcher:
        # This process becomes torchrun (exec, not a child): a SIGTERM from a scheduler or a
        # Ctrl-C reaches torchrun, which passes it to the trainers, which checkpoint and stop.
        # A child launcher would die alone and leave the trainers running unsupervised. The lock
        # of output_dir is a descriptor kept across the exec: torchrun holds it for the run.
        command, env = launch_command(args)
        env = runlock.launcher_environment(cfg.output_dir, env)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(command[0], command, env)
    from tempsamp.train.loop import train

    try:
        train(cfg, resume=args.resume, max_steps=args.max_steps, require_checkpoint=not args.allow_fresh)
    finally:
        runlock.release(cfg.output_dir)
    return 0  # train's last line (main process) says what was done and where the checkpoint is


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def launch_command(args) -> tuple[list[str], dict]:
    """The torchrun command that runs this same `tempsamp train` in ``args.num_processes`` processes.

    torchrun on GPUs and on a CPU alike: the processes then pick NCCL or gloo themselves
    (tempsamp.train.parallel), so a CPU run exercises the code a GPU run runs.
    """
    train_args = [args.recipe, *args.overrides]
    if args.resume:
        train_args.append("--resume")
    if args.allow_fresh:
        train_args.append("--allow-fresh")
    if args.max_steps is not None:
        train_args += ["--max-steps", str(args.max_steps)]
    # tempsamp.train.launch is torchrun itself, run in this process, that reports a refusal once
    launcher = [sys.executable, "-m", "tempsamp.train.launch", "--standalone", "--nproc_per_node", str(args.num_processes)]
    return [*launcher, "-m", "tempsamp", "train", *train_args], dict(os.environ)


def run_plot(args) -> int:
    from tempsamp.train.plot import plot_run

    for path in plot_run(args.run_dir, args.out):
        print(path)
    return 0
