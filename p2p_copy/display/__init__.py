"""What a person sees of a transfer: the progress interface and its tqdm, JSON and silent
displays (progress), and the notebook panel (notebook)."""
