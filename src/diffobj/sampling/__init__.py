"""Drawing images from a trained run: the samplers and classifier-free guidance."""
