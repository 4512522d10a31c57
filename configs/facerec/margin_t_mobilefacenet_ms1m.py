"""Paper recipe (METHODS.md §5.6), method margin_t: MobileFaceNet (512-d, ReLU, GDC) on MS1M-ArcFace
(85,742 identities, 112 px), batch 256 per device, s 64, m 0.5, SGD momentum 0.9, wd 5e-4.

Data: put the identity folders under data/faces_emore/train and the verification .bin files next to it.
Intended KD (1 − α)·CE + α·T²·KL with T 4, α 0.95; the reported numbers came from the released bug
(``distill.faithful_bug=true``).
"""
from _facerec_presets import ms1m_experiment


def config():
    return ms1m_experiment("margin_t", T=4.0, kd_alpha=0.95)
