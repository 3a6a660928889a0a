"""Small helpers every layer uses: atomic file writes (`atomic`), off-screen figures (`plots`), and the type and
range checks of settings dataclasses (`fields`).

May import: the standard library, torch, numpy, matplotlib (inside functions). Nothing of densegrpo_core but
itself.
"""
