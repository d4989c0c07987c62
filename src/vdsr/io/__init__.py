"""Image files in and out: decoding, encoding, atomic writes, where results may go."""
