"""The adversarial panel (issue 13, section 1): attacks and benign controls through the real job stages."""
