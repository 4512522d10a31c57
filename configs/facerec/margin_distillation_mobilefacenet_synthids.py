"""MarginDistillation: the teacher's class centres as the frozen classifier, per-sample margins in
[0.2, 0.5] from the teacher's sample-to-centre cosine (§5.5.5)."""
from _facerec_presets import synthids_experiment

# lr 0.02 for every student: at 0.1 the half-width MobileFaceNet's ArcFace loss plateaus in this short
# schedule (SynthIDs accuracy 0.62 at lr 0.1 against 0.78 at 0.02, one seed).


def config():
    return synthids_experiment("margin_distillation", epochs=8, lr=0.02, m_min=0.2, m_max=0.5)
