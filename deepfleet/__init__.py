"""deepfleet: from a laptop, one command takes fresh GPU hosts to a secured OpenAI-compatible endpoint.

This is the control side (CLI, PKI, keys, wheelhouse, test hosts). It drives pyinfra deploys
(deploys/, roles/) and never imports torch; what runs on hosts lives in runtime/.
"""

__version__ = "0.1.0"
