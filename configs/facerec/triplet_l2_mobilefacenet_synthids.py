"""Triplet distillation (l2): fine-tunes the ArcFace student (run arcface_mobilefacenet_synthids first) at
lr 1e-3 on semi-hard triplets mined with the current student, margins 0.2..0.5 from the teacher (§5.5.3).

CPU-sized bags: 16 identities × 8 images per step, 20 triplets (60 images) trained per step; 15 epochs
of 4 bags = 60 steps.
"""
from _facerec_presets import synthids_experiment


def config():
    return synthids_experiment("triplet_l2", epochs=15, lr=1e-3, mining_alpha=0.35)
