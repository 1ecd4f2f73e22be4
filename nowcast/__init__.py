"""nowcast: precipitation nowcasting with a multi-scale GAN, measured against the baselines."""

__version__ = "0.1.0"
