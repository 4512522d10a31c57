"""Paper recipe (METHODS.md §5.6), method arcface: MobileFaceNet (512-d, ReLU, GDC) on MS1M-ArcFace
(85,742 identities, 112 px), batch 256 per device, s 64, m 0.5, SGD momentum 0.9, wd 5e-4.

Data: put the identity folders under data/faces_emore/train and the verification .bin files next to it.
lr 0.1 ×0.1 at 100k/160k/220k iterations; W trainable, N(0, 0.01) init.
"""
from _facerec_presets import ms1m_experiment


def config():
    return ms1m_experiment("arcface")
