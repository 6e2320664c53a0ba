"""Operations on whole volumes: check, repair, info, relocating shard names, moving, copying, rebasing."""
