"""The warm-up of feature workers: librosa's slow imports happen here, once per worker.

Imported by each :class:`experiments.data.workers.WorkerPool` process before it
takes tasks (and by the fork server of :func:`experiments.data.workers.mp_context`).
librosa loads its submodules lazily; touching the functions the features use
pulls in scipy.signal, soxr and the filter code, so the first task does not pay
for them.
"""

import librosa
import numpy as np
import soundfile  # noqa: F401

from experiments.data import cache  # noqa: F401  # the task functions live here

librosa.stft(np.zeros(4096, np.float32), n_fft=2048, hop_length=512)
librosa.filters.mel(sr=22050, n_fft=2048, n_mels=8)
librosa.resample(np.zeros(4800, np.float32), orig_sr=48000, target_sr=22050)
librosa.perceptual_weighting(np.ones((1025, 2)), librosa.fft_frequencies(sr=22050, n_fft=2048))
