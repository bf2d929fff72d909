"""Model builders: open_clip CLIPs, image-encoder adapters, the frozen LM wrapper, the LiMBeR projector."""
