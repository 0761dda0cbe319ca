"""Real-kernel rigs for fsev's tests, benchmarks and screenshots: loop-mounted
ext4 images and tmpfs mounts that always clean up, a paced flood of real ext4
errors, a running `fsev trace`, `fsev top` under tmux. Nothing in fsev's own
code imports this package."""
