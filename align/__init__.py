"""AcuLa post-training alignment of an audio encoder with a frozen language model (the teacher). Imports torch."""
