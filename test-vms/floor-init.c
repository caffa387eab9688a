/*
 * Bench floor: the smallest possible PID 1. It proves the kernel reached
 * userspace, prints one line and reboots at once. QEMU runs with -no-reboot
 * (and the kernel with reboot=t), so the reboot ends the QEMU process: the
 * wall time of that process is the "bare kernel" floor for cold starts.
 *
 * Build: gcc -static -Os -s -o init floor-init.c
 */
#include <fcntl.h>
#include <string.h>
#include <sys/reboot.h>
#include <unistd.h>

int main(void)
{
    static const char msg[] = "floor: init reached\n";
    int fd = 1;

    /* The initramfs carries /dev/console, so the kernel hands us fds 0-2.
     * Should that ever be missing, try the console node directly. */
    if (fcntl(fd, F_GETFD) < 0)
        fd = open("/dev/console", O_WRONLY | O_NOCTTY);
    if (fd >= 0)
        (void)!write(fd, msg, sizeof msg - 1);

    sync();
    reboot(RB_AUTOBOOT);
    /* Not reached; if reboot failed, PID 1 must not exit (kernel panic). */
    for (;;)
        pause();
}
