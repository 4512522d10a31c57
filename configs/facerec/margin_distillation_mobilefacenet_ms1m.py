"""Paper recipe (METHODS.md §5.6), method margin_distillation: MobileFaceNet (512-d, ReLU, GDC) on MS1M-ArcFace
(85,742 identities, 112 px), batch 256 per device, s 64, m 0.5, SGD momentum 0.9, wd 5e-4.

Data: put the identity folders under data/faces_emore/train and the verification .bin files next to it.
Teacher fc7 (85,742 × 512) frozen as the classifier; per-sample margins M_min 0.2 .. M_max 0.5.
"""
from _facerec_presets import ms1m_experiment


def config():
    return ms1m_experiment("margin_distillation", m_min=0.2, m_max=0.5)
