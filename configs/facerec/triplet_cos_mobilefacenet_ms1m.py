"""Paper recipe (METHODS.md §5.6), method triplet_cos: MobileFaceNet (512-d, ReLU, GDC) on MS1M-ArcFace
(85,742 identities, 112 px), batch 256 per device, s 64, m 0.5, SGD momentum 0.9, wd 5e-4.

Data: put the identity folders under data/faces_emore/train and the verification .bin files next to it.
Fine-tunes the ArcFace student at lr 1e-3; bags of 7,200 images (400 identities × ≤ 18), semi-hard mining
(alpha 0.35) with the current student, 60 triplets (180 images) per step, margins 0.2 .. 0.5.
Mining runs every step over the whole bag here (the reference reuses one bag for many steps): costly.
"""
from _facerec_presets import ms1m_experiment


def config():
    return ms1m_experiment("triplet_cos", imgs_per_id=18, bag_size=7200, triplets_per_batch=60)
