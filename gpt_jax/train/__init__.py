"""Training: config, optimizer and schedules, state, steps, loss, guard, health, the trainer and its I/O."""
