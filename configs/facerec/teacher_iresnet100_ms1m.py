"""Paper teacher (METHODS.md §5.2, §5.6): IResNet-100 (PReLU, dropout 0.4, 512-d) trained with ArcFace on
MS1M-ArcFace, 85,742 identities, 112 px, batch 256, SGD 0.1 ×0.1 at 100k/160k/220k iterations.

Its final.pt provides the teacher embeddings and class centres (fc7 = head.weight) of every student run.
"""
from _facerec_presets import ms1m_experiment


def config():
    return ms1m_experiment("arcface", teacher=True)
