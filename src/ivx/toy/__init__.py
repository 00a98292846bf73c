"""ivx-toy: a small GPT-2 trained on an invented world, shipped so real experiments run offline.

May import: nothing (it stands alone, beside the bottom layer).
"""
