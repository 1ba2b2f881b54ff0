"""kwyn: keep what you need. Task-specialist trimming of audio foundation models."""
