"""The paper's baselines (section 4), trained by `python -m amych_tf.train --model=NAME`.

    direct       temporal CNN classifier, cross-entropy            (Table 3)
    autoencoder  2-D conv autoencoder + K-means on its bottleneck  (Table 2)
    apnet        APNet (Zinemanas et al. 2021): classifier, and
                 APNet + K-means on its prototype similarities     (Tables 2 and 3)

Each implements `amych_tf.contract.ModelContract` and is listed in
`amych_tf.registry`; `selection` holds their model-selection callbacks.
"""
