"""Binary building blocks: quantizers (forward/backward pairs) and the one binarize() mechanism."""
from .quantizers import (  # noqa: F401
    Quantizer,
    get_quantizer,
    list_quantizers,
    make_quantizer,
    register_quantizer,
    sign0,
)
from . import cyclic, hyperbolic, prox  # noqa: F401,E402  (registers the method quantizers)
from .binarize import (  # noqa: F401
    binarize,
    binary_layers,
    is_binary_param,
    weight_quantizer,
)
