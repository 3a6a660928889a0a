"""Small helpers every layer uses: atomic file writes (`atomic`) and off-screen figures (`plots`).

May import: the standard library, torch, numpy, matplotlib (inside functions). Nothing of densegrpo_core but
itself.
"""
