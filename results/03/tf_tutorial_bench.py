"""The peer of `03_dcgan_mnist.py --bench`: the TensorFlow tutorial's DCGAN train_step
(https://www.tensorflow.org/tutorials/generative/dcgan, its code as published), timed on random
batches with the same sizes. Run in a venv with tensorflow-cpu:
    OMP_NUM_THREADS=1 python results/03/tf_tutorial_bench.py 10 1   # steps, threads
"""
import json
import os
import sys
import time

import numpy as np
import tensorflow as tf
from tensorflow.keras import layers

steps, threads = int(sys.argv[1]), int(sys.argv[2])
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(threads)
BATCH_SIZE, noise_dim = 256, 100


def make_generator_model():
    return tf.keras.Sequential([
        layers.Input((100,)), layers.Dense(7 * 7 * 256, use_bias=False), layers.BatchNormalization(), layers.LeakyReLU(),
        layers.Reshape((7, 7, 256)),
        layers.Conv2DTranspose(128, (5, 5), strides=(1, 1), padding="same", use_bias=False),
        layers.BatchNormalization(), layers.LeakyReLU(),
        layers.Conv2DTranspose(64, (5, 5), strides=(2, 2), padding="same", use_bias=False),
        layers.BatchNormalization(), layers.LeakyReLU(),
        layers.Conv2DTranspose(1, (5, 5), strides=(2, 2), padding="same", use_bias=False, activation="tanh")])


def make_discriminator_model():
    return tf.keras.Sequential([
        layers.Input((28, 28, 1)), layers.Conv2D(64, (5, 5), strides=(2, 2), padding="same"), layers.LeakyReLU(),
        layers.Dropout(0.3), layers.Conv2D(128, (5, 5), strides=(2, 2), padding="same"), layers.LeakyReLU(),
        layers.Dropout(0.3), layers.Flatten(), layers.Dense(1)])


generator, discriminator = make_generator_model(), make_discriminator_model()
cross_entropy = tf.keras.losses.BinaryCrossentropy(from_logits=True)
generator_optimizer, discriminator_optimizer = tf.keras.optimizers.Adam(1e-4), tf.keras.optimizers.Adam(1e-4)


@tf.function
def train_step(images):
    noise = tf.random.normal([BATCH_SIZE, noise_dim])
    with tf.GradientTape() as gen_tape, tf.GradientTape() as disc_tape:
        generated_images = generator(noise, training=True)
        real_output = discriminator(images, training=True)
        fake_output = discriminator(generated_images, training=True)
        gen_loss = cross_entropy(tf.ones_like(fake_output), fake_output)
        disc_loss = (cross_entropy(tf.ones_like(real_output), real_output)
                     + cross_entropy(tf.zeros_like(fake_output), fake_output))
    generator_optimizer.apply_gradients(zip(gen_tape.gradient(gen_loss, generator.trainable_variables),
                                            generator.trainable_variables))
    discriminator_optimizer.apply_gradients(zip(disc_tape.gradient(disc_loss, discriminator.trainable_variables),
                                                discriminator.trainable_variables))
    return gen_loss, disc_loss


images = tf.constant(np.random.default_rng(0).uniform(-1, 1, (BATCH_SIZE, 28, 28, 1)).astype("float32"))
for _ in range(2):
    train_step(images)
t0 = time.perf_counter()
for _ in range(steps):
    out = train_step(images)
float(out[0])
seconds = time.perf_counter() - t0
print(json.dumps({"peer": "tensorflow tutorial", "tf": tf.__version__, "steps": steps, "threads": threads,
                  "images_per_s": steps * BATCH_SIZE / seconds, "load_average": os.getloadavg()}))
