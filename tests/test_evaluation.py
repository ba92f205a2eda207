"""Held-out evaluation seeds: fixed per prompt, distinct across prompts and images."""

from genrl.evaluation import evaluation_seeds


def test_each_image_of_each_prompt_has_its_own_fixed_seed():
    prompts = ["a red circle", "two blue squares", "a green triangle"]
    repeated, seeds = evaluation_seeds(prompts, 3)
    assert repeated == [p for p in prompts for _ in range(3)]
    assert len(set(seeds)) == 9  # no noise shared between images, within or across prompts
    assert evaluation_seeds(prompts, 3) == (repeated, seeds)  # deterministic
    # a prompt's seeds depend on its text only, not on its neighbours in the file
    alone = evaluation_seeds(["two blue squares"], 2)[1]
    assert alone == seeds[3:5]
