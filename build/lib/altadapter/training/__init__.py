"""Training an adapter on a frozen base: the loop, batches, losses, conditioning, caches, checkpoints, flags."""
