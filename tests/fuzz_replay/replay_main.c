/* tests/fuzz_replay/replay_main.c: runs a libFuzzer target over every file of a
 * corpus directory, without libFuzzer. Sanitizer builds turn any bad access into
 * a failure; a plain build still catches crashes and asserts. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv)
{
    DIR *d;
    struct dirent *e;
    int n = 0;

    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 2;
    }
    d = opendir(argv[1]);
    if (!d) {
        perror(argv[1]);
        return 1;
    }
    while ((e = readdir(d)) != NULL) {
        char path[4096];
        FILE *f;
        long len;
        uint8_t *data;
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", argv[1], e->d_name);
        f = fopen(path, "rb");
        if (!f)
            continue;
        fseek(f, 0, SEEK_END);
        len = ftell(f);
        fseek(f, 0, SEEK_SET);
        data = malloc(len > 0 ? (size_t)len : 1);
        if (len > 0 && fread(data, 1, (size_t)len, f) != (size_t)len) {
            fclose(f);
            free(data);
            return 1;
        }
        fclose(f);
        LLVMFuzzerTestOneInput(data, (size_t)len);
        free(data);
        n++;
    }
    closedir(d);
    printf("replayed %d inputs from %s\n", n, argv[1]);
    return n > 0 ? 0 : 1;
}
