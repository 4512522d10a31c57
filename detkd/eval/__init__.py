"""Evaluators: WIDER FACE, face verification."""
