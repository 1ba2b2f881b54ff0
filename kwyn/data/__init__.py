"""Datasets: raw layouts (nsynth), offline rendering (soundfont), and the prepared arrays (prepare)."""
