"""Compile and run exported C: the host ``cc``, and an ARM Cortex-M3 build under QEMU.

* host: ``cc -std=c99 -O2`` of model.c + a small harness that reads int8 images from a binary
  file and writes the int32 logits (:data:`HARNESS_C`);
* Cortex-M3: ``arm-none-eabi-gcc -mcpu=cortex-m3 -mthumb`` with newlib's semihosting library
  (``--specs=rdimon.specs``), a minimal vector table and linker script for QEMU's ``mps2-an385``
  board (4 MiB code RAM at 0x0, 4 MiB data RAM at 0x20000000), run with
  ``qemu-system-arm -M mps2-an385 -semihosting``: the harness opens the input and logits files
  on the host through semihosting;
* :func:`multiplications_in_object` disassembles an object (``objdump -d``) and counts
  multiply instructions per generated function.

Missing tools raise :class:`ToolchainMissing` with the Debian packages to install.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from shiftadd.errors import UserError

ARM_PACKAGES = "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"
HOST_CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]
ARM_CFLAGS = ["-std=c99", "-O2", "-mcpu=cortex-m3", "-mthumb", "-ffunction-sections", "-fdata-sections"]


class ToolchainMissing(UserError, RuntimeError):
    """A compiler / emulator needed for this step is not installed."""


HARNESS_C = r"""/* Test harness: reads int8 images (MODEL_INPUT_SIZE bytes each) from argv[1] (default input.bin),
 * writes MODEL_NUM_CLASSES int32 logits per image to argv[2] (default logits.bin); argv[3]: repeats
 * per image (timing). Prints "images N seconds S". */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "model.h"

static int8_t image[MODEL_INPUT_SIZE];
static int32_t logits[MODEL_NUM_CLASSES];

int main(int argc, char **argv)
{
    const char *in_path = argc > 1 ? argv[1] : "input.bin";
    const char *out_path = argc > 2 ? argv[2] : "logits.bin";
    long repeat = argc > 3 ? atol(argv[3]) : 1;
    FILE *fi = fopen(in_path, "rb");
    FILE *fo = fopen(out_path, "wb");
    long n = 0, r;
    clock_t t0, t1;
    if (!fi || !fo) {
        printf("harness: cannot open %s or %s\n", in_path, out_path);
        return 1;
    }
    t0 = clock();
    while (fread(image, 1, MODEL_INPUT_SIZE, fi) == MODEL_INPUT_SIZE) {
        for (r = 0; r < repeat; r++) model_run(image, logits);
        if (fwrite(logits, sizeof(int32_t), MODEL_NUM_CLASSES, fo) != MODEL_NUM_CLASSES) return 1;
        n++;
    }
    t1 = clock();
    fclose(fi);
    fclose(fo);
    printf("images %ld seconds %.6f\n", n * repeat, (double)(t1 - t0) / CLOCKS_PER_SEC);
    return 0;
}
"""

STARTUP_C = r"""/* Minimal Cortex-M startup for QEMU mps2-an385: vector table, zero .bss, semihosting, main. */
#include <stdint.h>
#include <stdlib.h>
extern int main(int, char **);
extern void initialise_monitor_handles(void);
extern uint32_t __bss_start__, __bss_end__, __StackTop;
void Reset_Handler(void)
{
    for (uint32_t *p = &__bss_start__; p < &__bss_end__; p++) *p = 0;
    initialise_monitor_handles();
    exit(main(0, 0));
}
static void Fault_Handler(void) { exit(99); }
__attribute__((section(".vectors"), used)) static const void *vectors[16] = {
    &__StackTop, (void *)Reset_Handler, (void *)Fault_Handler, (void *)Fault_Handler,
    (void *)Fault_Handler, (void *)Fault_Handler, (void *)Fault_Handler,
};
"""

LINKER_LD = """/* QEMU mps2-an385: code in SSRAM1 at 0x0, data/bss/heap/stack in SSRAM2/3 at 0x20000000.
   .data is loaded in place by QEMU (no copy loop needed under the emulator). */
MEMORY { FLASH (rx) : ORIGIN = 0x00000000, LENGTH = 4M
         RAM (rwx) : ORIGIN = 0x20000000, LENGTH = 4M }
ENTRY(Reset_Handler)
SECTIONS {
  .text : { KEEP(*(.vectors)) *(.text*) *(.rodata*) . = ALIGN(4); } > FLASH
  .ARM.exidx : { *(.ARM.exidx*) } > FLASH
  .data : { *(.data*) . = ALIGN(4); } > RAM
  .bss : { __bss_start__ = .; *(.bss*) *(COMMON) . = ALIGN(4); __bss_end__ = .; } > RAM
  end = .; _end = .; __end__ = .;
  __StackTop = ORIGIN(RAM) + LENGTH(RAM);
  __stack = __StackTop;
}
"""


def _need(tool: str, what: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ToolchainMissing(f"{tool} not found: {what} needs it (Debian: apt-get install -y {ARM_PACKAGES})")
    return path


def host_compiler() -> Optional[str]:
    """The host C compiler (``$CC``, cc, gcc, clang) or None."""
    for c in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if c and shutil.which(c):
            return shutil.which(c)
    return None


def arm_tools_missing() -> Optional[str]:
    """None when the Cortex-M build and QEMU run can work, else a message saying what to install."""
    for tool in ("arm-none-eabi-gcc", "arm-none-eabi-size", "arm-none-eabi-objdump", "qemu-system-arm"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install -y {ARM_PACKAGES})"
    return None


def _run(cmd: Sequence[str], cwd: str, timeout: float = 600) -> str:
    r = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout + r.stderr


def write_images(path: str, q_images: torch.Tensor) -> None:
    """int8 images (N, C, H, W) as raw bytes."""
    if q_images.dtype != torch.int8:
        raise ValueError("images must be int8 codes (IntegerNetwork.quantize_input)")
    q_images.contiguous().numpy().tofile(path)


def read_logits(path: str, num_classes: int) -> torch.Tensor:
    """int32 logits written by the harness, as int64 (N, classes)."""
    a = np.fromfile(path, dtype="<i4")
    return torch.from_numpy(a.astype(np.int64)).reshape(-1, num_classes)


def build_host(c_dir: str, build_dir: Optional[str] = None, extra_flags: Sequence[str] = ()) -> str:
    """Compile model.c + the harness with the host compiler; returns the executable's path."""
    cc = host_compiler()
    if cc is None:
        raise ToolchainMissing("no host C compiler (cc, gcc or clang) found")
    build_dir = build_dir or c_dir
    os.makedirs(build_dir, exist_ok=True)
    harness = os.path.join(build_dir, "harness.c")
    with open(harness, "w") as f:
        f.write(HARNESS_C)
    exe = os.path.join(build_dir, "model_host")
    _run([cc, *HOST_CFLAGS, *extra_flags, "-I", c_dir, os.path.join(c_dir, "model.c"), harness, "-o", exe], build_dir)
    return exe


def run_host(exe: str, q_images: torch.Tensor, work_dir: str, num_classes: int, repeat: int = 1) -> Dict[str, object]:
    """Run the host build on int8 images; returns {"logits": int64 (N, classes), "seconds": float}
    (``seconds``: the harness's CPU time for all images x ``repeat`` runs). The run may take 10 minutes
    plus one second per image before it is taken for hung (10,000 ResNet-20 images take ~4 minutes)."""
    inp, out = os.path.join(work_dir, "input.bin"), os.path.join(work_dir, "logits.bin")
    write_images(inp, q_images)
    text = _run([exe, inp, out, str(int(repeat))], work_dir, timeout=600 + len(q_images) * int(repeat))
    secs = float(re.search(r"seconds ([0-9.]+)", text).group(1))
    return {"logits": read_logits(out, num_classes), "seconds": secs}


def compile_object(c_dir: str, build_dir: str, target: str = "host") -> str:
    """model.c compiled alone (``-c``) for ``target`` "host" or "arm"; returns the object's path."""
    os.makedirs(build_dir, exist_ok=True)
    obj = os.path.join(build_dir, f"model_{target}.o")
    if target == "host":
        cc = host_compiler()
        if cc is None:
            raise ToolchainMissing("no host C compiler (cc, gcc or clang) found")
        _run([cc, *HOST_CFLAGS, "-c", os.path.join(c_dir, "model.c"), "-o", obj], build_dir)
    else:
        gcc = _need("arm-none-eabi-gcc", "the Cortex-M build")
        _run([gcc, *ARM_CFLAGS, "-fstack-usage", "-c", os.path.join(c_dir, "model.c"), "-o", obj], build_dir)
    return obj


#: Multiply instructions (x86-64 and ARM Thumb-2), matched against the objdump mnemonic.
_MUL_X86 = re.compile(r"^(i?mul[a-z]*|v?pmul\w*|v?pmadd\w*|mulx|v?mul[sp][sd])$")
_MUL_ARM = re.compile(r"^(mul|muls|mla|mls|[su]mull|[su]mlal|smul\w*|smla\w*|smls\w*|smmul\w*|smml\w*|smuad\w*|"
                      r"smusd\w*|umaal|[su]div)(\.\w+)?$")
_MUL_CALL = re.compile(r"__aeabi_l?mul|__mul[sd]i3|__aeabi_[iu]?l?div|__divsi3")


def multiplications_in_object(obj: str, target: str = "host") -> Dict[str, int]:
    """Multiply instructions (and calls to multiply/divide helpers) per function of an object file."""
    objdump = shutil.which("objdump") if target == "host" else _need("arm-none-eabi-objdump", "the ARM check")
    if objdump is None:
        raise ToolchainMissing("objdump not found (Debian: apt-get install -y binutils)")
    text = _run([objdump, "-d", "--no-show-raw-insn", obj], os.path.dirname(obj))
    pattern = _MUL_X86 if target == "host" else _MUL_ARM
    counts: Dict[str, int] = {}
    func = None
    for line in text.splitlines():
        m = re.match(r"^[0-9a-f]+ <([^>]+)>:$", line)
        if m:
            func = m.group(1).split(".")[0]
            counts.setdefault(func, 0)
            continue
        parts = line.split("\t")
        if func is None or len(parts) < 2:
            continue
        mnemonic = parts[1].strip().split()[0] if parts[1].strip() else ""
        operands = parts[2] if len(parts) > 2 else ""
        if pattern.match(mnemonic) or (mnemonic.startswith(("call", "bl")) and _MUL_CALL.search(operands + line)):
            counts[func] += 1
    return counts


def build_arm(c_dir: str, build_dir: str) -> str:
    """Link model.c + harness + startup for QEMU mps2-an385 (Cortex-M3); returns the ELF path."""
    gcc = _need("arm-none-eabi-gcc", "the Cortex-M build")
    os.makedirs(build_dir, exist_ok=True)
    for name, text in (("harness.c", HARNESS_C), ("startup.c", STARTUP_C), ("mps2_an385.ld", LINKER_LD)):
        with open(os.path.join(build_dir, name), "w") as f:
            f.write(text)
    elf = os.path.join(build_dir, "model_arm.elf")
    _run([gcc, *ARM_CFLAGS, "--specs=rdimon.specs", "-nostartfiles", "-Wl,--gc-sections",
          "-T", os.path.join(build_dir, "mps2_an385.ld"), "-I", c_dir, os.path.join(c_dir, "model.c"),
          os.path.join(build_dir, "harness.c"), os.path.join(build_dir, "startup.c"), "-o", elf], build_dir)
    return elf


def run_qemu(elf: str, q_images: torch.Tensor, work_dir: str, num_classes: int, timeout: float = 600) -> torch.Tensor:
    """Run the Cortex-M3 ELF under qemu-system-arm (semihosting; files in ``work_dir``); returns int64 logits."""
    qemu = _need("qemu-system-arm", "the Cortex-M run")
    out = os.path.join(work_dir, "logits.bin")
    if os.path.exists(out):
        os.remove(out)
    write_images(os.path.join(work_dir, "input.bin"), q_images)
    _run([qemu, "-M", "mps2-an385", "-cpu", "cortex-m3", "-nographic", "-monitor", "none", "-serial", "none",
          "-semihosting-config", "enable=on,target=native", "-kernel", elf], work_dir, timeout)
    if not os.path.exists(out):
        raise RuntimeError("the Cortex-M run wrote no logits")
    return read_logits(out, num_classes)


@dataclass
class ArmSize:
    """Memory of the Cortex-M build of model.c alone (from arm-none-eabi-size and -fstack-usage)."""

    text: int  # code + const weights (flash)
    data: int
    bss: int  # the activation arena
    stack: int  # model_run + the deepest op function it calls

    @property
    def flash(self) -> int:
        return self.text + self.data

    @property
    def ram(self) -> int:
        return self.data + self.bss + self.stack


def arm_size(c_dir: str, build_dir: str) -> ArmSize:
    """Flash and RAM of model.c for Cortex-M3 (``arm-none-eabi-size`` of the object, stack from -fstack-usage)."""
    obj = compile_object(c_dir, build_dir, "arm")
    size = _need("arm-none-eabi-size", "the size report")
    line = _run([size, obj], build_dir).strip().splitlines()[-1].split()
    text, data, bss = int(line[0]), int(line[1]), int(line[2])
    su = os.path.splitext(obj)[0] + ".su"
    frames: Dict[str, int] = {}
    for row in open(su):
        parts = row.split("\t")
        frames[parts[0].split(":")[-1]] = int(parts[1])
    run = frames.pop("model_run", 0)
    return ArmSize(text, data, bss, run + max(frames.values(), default=0))


__all__ = ["ARM_PACKAGES", "ArmSize", "HARNESS_C", "ToolchainMissing", "arm_size", "arm_tools_missing",
           "build_arm", "build_host", "compile_object", "host_compiler", "multiplications_in_object",
           "read_logits", "run_host", "run_qemu", "write_images"]
