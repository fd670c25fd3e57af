"""The RL training loop (tempsamp.train.loop.train) and its pieces: config, schedule, scoring, checkpoints."""
