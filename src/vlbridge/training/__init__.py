"""Training: the shared loop (loop.py) and the CLIP (clip.py), LiMBeR (limber.py) and SSL (ssl.py) trainers."""
