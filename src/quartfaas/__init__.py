"""quartfaas: serve large models as pipelines of serverless functions inside a latency SLO.

See README.md for the architecture; ``quartfaas.spec`` for the pipeline spec.
"""

__version__ = "0.1.0"
