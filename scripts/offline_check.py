"""Pre-flight for scripts/offline_train.sh: a tiny molvae model (bfloat16 matmuls) trains,
validates, checkpoints and resumes on this machine's default device. Prints CHECK OK."""

import sys
import tempfile
from pathlib import Path

import jax

from molvae import chem
from molvae.loggers import JsonlLogger
from molvae.models.vae import ModelConfig
from molvae.training import TrainConfig, train
from molvae.vocab import Vocab

smiles = ["CCO", "c1ccccc1", "CC(=O)Nc1ccc(O)cc1", "CCN(CC)CC", "O=C(O)c1ccccc1"] * 8
selfies = [chem.smiles_to_selfies(s) for s in smiles]
vocab = Vocab.fit(selfies)
tokens, lengths = vocab.encode_batch(selfies, 40)
mcfg = ModelConfig(  # experiment=moses_gpu's decoder type and matmul dtype, tiny
    vocab_size=len(vocab),
    embed_dim=8,
    enc_hidden=16,
    latent_dim=4,
    dec_hidden=16,
    dtype="bfloat16",
    decoder="cifg",
)
cfg = TrainConfig(
    steps=12,
    batch_size=8,
    log_every=4,
    eval_every=6,
    ckpt_every=6,
    eval_size=8,
    warmup_steps=2,
    progress=False,
)
d = Path(tempfile.mkdtemp())
r = train(mcfg, cfg, (tokens, lengths), (tokens[:8], lengths[:8]), d, JsonlLogger(d / "m.jsonl"))
r2 = train(
    mcfg,
    TrainConfig(**{**cfg.__dict__, "steps": 18}),
    (tokens, lengths),
    (tokens[:8], lengths[:8]),
    d,
    JsonlLogger(d / "m.jsonl"),
)
print("CHECK OK", jax.devices(), r.step, r2.step, r2.final_eval, file=sys.stderr)
