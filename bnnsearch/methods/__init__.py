"""Method registry. One file per method; importing this package registers them all.

A method is a small object: a frozen ``Hparams`` dataclass (the schema its search space and the
config's ``hparams:`` are validated against), ``build`` (architecture + binarization),
``setup`` (optimizers and scheduled values) and ``train_step`` (a shared default: forward,
backward, step every optimizer; only methods whose update is not "backward then step"
override it).
"""
from .base import (  # noqa: F401
    METHODS,
    RunInfo,
    Method,
    Scheduled,
    Setup,
    check_partition,
    get_method,
    list_methods,
    make_fp_optimizer,
    register_method,
    split_params,
)
from . import latent, filtered, proxconnect, cyclebnn, hbnn, local_binary  # noqa: F401,E402  (registration)
