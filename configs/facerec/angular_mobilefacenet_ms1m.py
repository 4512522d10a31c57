"""Paper recipe (METHODS.md §5.6), method angular: MobileFaceNet (512-d, ReLU, GDC) on MS1M-ArcFace
(85,742 identities, 112 px), batch 256 per device, s 64, m 0.5, SGD momentum 0.9, wd 5e-4.

Data: put the identity folders under data/faces_emore/train and the verification .bin files next to it.
Teacher: IResNet-100 (run teacher_iresnet100_ms1m first); loss CE_ArcFace + 1.0 · mean(1 − cos(x, t)).
"""
from _facerec_presets import ms1m_experiment


def config():
    return ms1m_experiment("angular", alpha=1.0)
