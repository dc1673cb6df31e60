/*
 * kmx-init: the guest's /init, first stage. Mounts the kernel filesystems, names the host,
 * loads the cell's modules (/etc/kmatrix/modules, in dependency order, resolved on the host),
 * then hands over to the shell stage (/usr/lib/kmatrix/init.sh: channel, shell, agent).
 *
 * Why not a shell script: under TCG every process costs tens of milliseconds (fork, exec,
 * busybox's page faults), and the shell's mount, mkdir, ln and modprobe were a third of a
 * second of every boot. Here each step is one system call.
 *
 * Module loading is finit_module(2) on the decompressed .ko files the image holds; a module
 * already loaded or built in (EEXIST) is fine, any other failure is reported on the console
 * the way the shell stage reported modprobe's, and the boot goes on (a missing driver is the
 * test's verdict to give, not the init's).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#define SHELL_STAGE "/usr/lib/kmatrix/init.sh"
#define MODULE_LIST "/etc/kmatrix/modules"

struct fs {
	const char *type, *dir;
	int optional; /* small kernels may lack it: no message */
};

static const struct fs filesystems[] = {
	{"proc", "/proc", 0},         {"sysfs", "/sys", 0},
	{"devpts", "/dev/pts", 0},    {"tmpfs", "/dev/shm", 0},
	{"tmpfs", "/tmp", 0},         {"tmpfs", "/run", 0},
	{"debugfs", "/sys/kernel/debug", 1}, {"cgroup2", "/sys/fs/cgroup", 1},
};

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);

	if (fd < 0)
		return;
	if (write(fd, text, strlen(text)) < 0)
		fprintf(stderr, "kmx-init: %s: %s\n", path, strerror(errno));
	close(fd);
}

static void uptime(char *buf, size_t size)
{
	int fd = open("/proc/uptime", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, buf, size - 1) : -1;

	if (fd >= 0)
		close(fd);
	buf[n > 0 ? n : 0] = '\0';
	buf[strcspn(buf, " \n")] = '\0';
}

static void mounts(void)
{
	static const char *dirs[] = {"/dev/pts", "/dev/shm", "/tmp", "/run", "/root"};
	size_t i;

	/* devtmpfs first: the console and the agent port are device nodes. */
	if (mount("devtmpfs", "/dev", "devtmpfs", 0, NULL) != 0 && errno != EBUSY)
		fprintf(stderr, "kmx-init: mount devtmpfs /dev: %s\n", strerror(errno));
	for (i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++)
		if (mkdir(dirs[i], 0755) != 0 && errno != EEXIST)
			fprintf(stderr, "kmx-init: mkdir %s: %s\n", dirs[i], strerror(errno));
	for (i = 0; i < sizeof(filesystems) / sizeof(filesystems[0]); i++) {
		const struct fs *f = &filesystems[i];

		if (mount(f->type, f->dir, f->type, 0, NULL) != 0 && errno != EBUSY && !f->optional)
			fprintf(stderr, "mount: mounting %s on %s failed: %s\n", f->type, f->dir,
				strerror(errno));
	}
	if (symlink("/proc/self/fd", "/dev/fd") != 0 && errno != EEXIST)
		fprintf(stderr, "kmx-init: /dev/fd: %s\n", strerror(errno));
}

/* Loads each module of the list; returns how many failed (each one reported). */
static int load_modules(void)
{
	struct utsname u;
	char line[512], path[1024];
	int failed = 0;
	FILE *list = fopen(MODULE_LIST, "re");

	if (list == NULL)
		return 0;
	if (uname(&u) != 0) {
		fclose(list);
		return 0;
	}
	while (fgets(line, sizeof(line), list) != NULL) {
		int fd;

		line[strcspn(line, "\r\n")] = '\0';
		if (line[0] == '\0')
			continue;
		snprintf(path, sizeof(path), "/lib/modules/%s/%s", u.release, line);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			printf("kmatrix: modprobe failed: %s: %s\n", line, strerror(errno));
			failed++;
			continue;
		}
		if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST) {
			printf("kmatrix: modprobe failed: %s: %s\n", line, strerror(errno));
			failed++;
		}
		close(fd);
	}
	fclose(list);
	return failed;
}

int main(void)
{
	char up[64];
	char *const argv[] = {"sh", SHELL_STAGE, NULL};

	umask(022);
	setenv("PATH", "/bin:/sbin:/usr/bin:/usr/sbin", 1);
	setenv("HOME", "/root", 1);
	mounts();
	write_file("/proc/sys/kernel/hostname", "kmatrix");
	uptime(up, sizeof(up));
	printf("kmatrix: userspace reached at %ss\n", up);
	fflush(stdout);
	load_modules();
	fflush(stdout);
	execv("/bin/sh", argv);
	fprintf(stderr, "kmx-init: exec /bin/sh %s: %s; powering off\n", SHELL_STAGE,
		strerror(errno));
	sync();
	reboot(RB_POWER_OFF);
	return 1;
}
