"""ArcFace teacher of the CPU-sized SynthIDs benchmark: IResNet-18 at half width (~3.1M params), 48 px.

Trained once; its ``final.pt`` is the teacher of every ``*_mobilefacenet_synthids`` config (through the
teacher cache, built on first use). Same recipe as the students: SGD 0.1, s 64, m 0.5, step decay.
"""
from _facerec_presets import synthids_experiment


def config():
    return synthids_experiment("arcface", teacher=True, epochs=8, lr=0.1)
