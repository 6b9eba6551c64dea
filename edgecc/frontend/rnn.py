"""Recurrent layers (``RNN``, ``GRU``, ``LSTM``): unrolled over the static sequence length."""
