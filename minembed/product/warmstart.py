"""The transformer's start: a bag model trained first on the same corpus gives the token table,
and the blocks begin as the identity, so the transformer starts as that bag model and refines it
(docs/quality.md: +10 to +19 kNN points over a random start)."""
import dataclasses

import numpy as np

from ..core import optim
from ..core.backend import to_device
from ..core.pairs import PairSampler
from ..core.train import Diverged, train_loop
from ..errors import MinembedError
from .model import encoder_module
from .progress import Progress
from .settings import TrainConfig, auto_epochs
from .tokenize import mask_token_id


def bag_table(cfg, data, tok, xp, quiet, comm, usable=None):
    """The transformer's first token table: a bag model of its dimension trained first on the
    same corpus (the transformer's pairs and crops, the bag model's other defaults), its rows
    rescaled to a fresh table's std (0.02). From scratch the transformer learns what tokens mean
    through attention alone; from a bag table it starts knowing it (with start_as_the_bag,
    docs/quality.md: +10 to +19 kNN points)."""
    bcfg = TrainConfig(dim=cfg.dim, seed=cfg.seed, vocab_size=cfg.vocab_size, crops=cfg.crops,
                       crop_sentences=cfg.crop_sentences, sentence_min=cfg.sentence_min,
                       sentence_max=cfg.sentence_max, span_min=cfg.span_min, span_max=cfg.span_max,
                       # rest, crops or mask
                       positives=cfg.positives, mask_frac=cfg.mask_frac, members=1)
    bcfg = bcfg.resolved()
    sampler = PairSampler(data, bcfg, mask_token_id(tok))
    if usable is not None:  # the run's documents (not those it keeps out)
        sampler.usable = usable
    bcfg = dataclasses.replace(bcfg, batch_size=min(bcfg.batch_size, len(sampler.usable)))
    spe = sampler.steps_per_epoch(bcfg.batch_size)
    bcfg = dataclasses.replace(bcfg, epochs=auto_epochs("bag", spe))
    enc_cfg = bcfg.encoder_config(tok.get_vocab_size())
    bag = encoder_module("bag")
    params = {k: to_device(v, xp)
              for k, v in bag.init_params(enc_cfg, np.random.default_rng([cfg.seed, 3])).items()}
    bar = Progress(spe * bcfg.epochs, "bag model for the token table", "step", quiet=quiet)
    try:
        train_loop(bag, params, optim.adam_init(params), sampler, bcfg, enc_cfg, spe * bcfg.epochs,
                   on_step=lambda step, r: bar.update(1))
    except Diverged as e:
        raise MinembedError(f"the bag model for the transformer's token table: {e} (try "
                            "--no-bag-init)")
    finally:
        bar.close()
    table = params["tok_emb"]
    if comm is not None:  # the same table on every process, whatever their BLAS did
        table = comm.allreduce(table) / comm.size
    return table * (0.02 / float(table.std()))


def start_as_the_bag(params):
    """With a bag model's table the transformer starts as that bag model: every block's output
    projections zeroed, so each residual branch adds 0 and the blocks begin as the identity
    (their first steps train the projections, then the rest), and the position table at a
    tenth of its std, so that the tokens make the vector, not noise of their size. Random
    blocks cost 15-16 kNN points before the first step (built-in corpus, fortunes), which
    training at 5e-4 never won back (71.1 / 38.6); this start at 3e-5 ends at 75.7 / 43.4."""
    for name, p in params.items():
        if name.endswith(("attn.out.w", "mlp.proj.w")):
            p[...] = 0
    params["pos_emb"] *= 0.1
