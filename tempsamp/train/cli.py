"""`tempsamp train RECIPE [key=value ...]` and `tempsamp plot RUN_DIR`."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("train", help="RL fine-tuning with TempSamp-R1 or a baseline (a YAML recipe + key=value overrides)")
    p.add_argument("recipe", help="recipe file, or the name of a shipped recipe (e.g. charades_tempsamp, tiny_cpu)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override any recipe key, e.g. strategy=grpo learning_rate=2e-6")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in output_dir")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in total (the schedule still spans the recipe)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
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
    from tempsamp.train.loop import train

    out = train(cfg, resume=args.resume, max_steps=args.max_steps)
    print(f"run written to {out}")
    return 0


def run_plot(args) -> int:
    from tempsamp.train.plot import plot_run

    for path in plot_run(args.run_dir, args.out):
        print(path)
    return 0
