"""Files in and out: atomic writes and checked keys (`atomic`), image files with their bit depth, grey-ness
and alpha (`images`), and the one safe reader of weight files and checkpoints (`weights`).

Nothing is imported here: `ir-lightning shards` reads `atomic` without torch."""
